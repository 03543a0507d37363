"""Compaction and the event history (apply's events and events_since)."""

from __future__ import annotations

import pytest

from raftreg.common.types import DeleteRange, Event, EventType, KeyValue, Put, Range, Txn
from raftreg.errors import Compacted, InvalidArgument
from raftreg.store import Compact, Done, LeaseGrant, LeaseRevoke, Request, Store

from .helpers import failure, get, keys, put, run


def _history_store() -> Store:
    s = Store()
    put(s, b"a", b"1")  # 2
    put(s, b"b", b"1")  # 3
    put(s, b"a", b"2")  # 4
    run(s, DeleteRange(b"b"))  # 5
    put(s, b"c", b"1")  # 6
    put(s, b"a", b"3")  # 7
    return s


def test_compact_errors() -> None:
    s = _history_store()
    f = failure(run(s, Compact(8)), "FutureRevision")
    assert f.revision == 7
    assert run(s, Compact(4)) == Done(7)
    assert s.compact_revision == 4
    f = failure(run(s, Compact(4)), "Compacted")
    assert f.compact_revision == 4
    failure(run(s, Compact(3)), "Compacted")
    assert run(s, Compact(7)) == Done(7)  # the current revision can be compacted
    assert s.compact_revision == 7
    assert s.revision == 7


def test_reads_at_and_after_compact_revision_unchanged() -> None:
    s = _history_store()
    expected = {rev: s.range(Range(b"", b"\0", revision=rev)) for rev in range(5, 8)}
    run(s, Compact(5))
    for rev, r in expected.items():
        assert s.range(Range(b"", b"\0", revision=rev)) == r
    with pytest.raises(Compacted):
        s.range(Range(b"", b"\0", revision=4))
    assert keys(s, revision=5) == [b"a"]
    assert get(s, b"a", revision=5) == KeyValue(b"a", 2, 4, 2, b"2", 0)


def test_compaction_drops_history_and_shrinks() -> None:
    s = Store()
    for i in range(200):
        put(s, b"k", b"x" * 100 + str(i).encode())
        put(s, b"gone%d" % i)
        run(s, DeleteRange(b"gone%d" % i))
    big = len(s.snapshot())
    records_before = s._kv.record_count()
    assert records_before == 200 + 400
    run(s, Compact(s.revision - 1))
    # left: live k, plus gone199's put and its tombstone (changes at >= the compact revision)
    assert s._kv.record_count() == 3
    assert len(s.snapshot()) < big // 20
    kv = get(s, b"k")
    assert kv is not None and kv.version == 200
    # versions continue after compaction
    put(s, b"k", b"new")
    kv = get(s, b"k")
    assert kv is not None and (kv.version, kv.create_revision) == (201, 2)


def test_deleted_key_recreated_after_compaction() -> None:
    s = Store()
    put(s, b"k", b"1")  # 2
    run(s, DeleteRange(b"k"))  # 3
    put(s, b"other")  # 4
    run(s, Compact(4))
    assert s._kv.record_count() == 1  # k's put and tombstone are both gone
    put(s, b"k", b"2")  # 5
    assert get(s, b"k") == KeyValue(b"k", 5, 5, 1, b"2", 0)


def test_changes_at_the_compact_revision_are_kept_for_watchers() -> None:
    # Events at exactly the compact revision are still served, so their records (and the
    # predecessor that fills prev_kv) stay until a later compaction.
    s = Store()
    put(s, b"k", b"1")  # 2
    run(s, DeleteRange(b"k"))  # 3
    run(s, Compact(3))
    assert s._kv.record_count() == 2
    assert s.events_since(3, b"k", b"") == [
        Event(EventType.DELETE, KeyValue(b"k", 0, 3, 0, b"", 0), KeyValue(b"k", 2, 2, 1, b"1", 0))
    ]
    put(s, b"x")  # 4
    run(s, Compact(4))
    assert s._kv.record_count() == 1


def test_events_from_apply_match_events_since() -> None:
    s = Store()
    all_events: list[Event] = []
    run(s, LeaseGrant(1, 10))
    for cmd in (
        Put(b"a", b"1"),
        Put(b"b", b"1", lease=1),
        Txn((), (Put(b"c", b"1"), Put(b"a", b"2"), DeleteRange(b"b"))),
        Put(b"b", b"2", lease=1),
        Put(b"d", b"1", lease=1),
        LeaseRevoke(1),
        DeleteRange(b"", b"\0"),
    ):
        _, events = s.apply(Request(cmd))
        all_events.extend(events)
    assert s.events_since(0, b"", b"\0") == all_events
    assert s.events_since(1, b"", b"\0") == all_events
    revs = [e.kv.mod_revision for e in all_events]
    assert revs == sorted(revs)
    # within a revision: the order applied (txn: c, a, then b deleted)
    assert [(e.type, e.kv.key) for e in all_events if e.kv.mod_revision == 4] == [
        (EventType.PUT, b"c"),
        (EventType.PUT, b"a"),
        (EventType.DELETE, b"b"),
    ]
    # filters
    assert s.events_since(0, b"a", b"") == [e for e in all_events if e.kv.key == b"a"]
    assert s.events_since(0, b"b", b"d") == [e for e in all_events if b"b" <= e.kv.key < b"d"]
    assert s.events_since(5, b"", b"\0") == [e for e in all_events if e.kv.mod_revision >= 5]
    assert s.events_since(s.revision + 1, b"", b"\0") == []


def test_events_since_prev_kv_filled() -> None:
    s = _history_store()
    events = s.events_since(4, b"a", b"")
    assert events == [
        Event(EventType.PUT, KeyValue(b"a", 2, 4, 2, b"2", 0), KeyValue(b"a", 2, 2, 1, b"1", 0)),
        Event(EventType.PUT, KeyValue(b"a", 2, 7, 3, b"3", 0), KeyValue(b"a", 2, 4, 2, b"2", 0)),
    ]
    b_events = s.events_since(0, b"b", b"")
    assert b_events[1] == Event(
        EventType.DELETE, KeyValue(b"b", 0, 5, 0, b"", 0), KeyValue(b"b", 3, 3, 1, b"1", 0)
    )


def test_events_since_and_compaction() -> None:
    s = _history_store()
    before = s.events_since(4, b"", b"\0")
    run(s, Compact(4))
    # exactly the compact revision is still served, with prev_kv intact
    assert s.events_since(4, b"", b"\0") == before
    assert before[0].prev_kv == KeyValue(b"a", 2, 2, 1, b"1", 0)
    with pytest.raises(Compacted) as exc:
        s.events_since(3, b"", b"\0")
    assert exc.value.compact_revision == 4
    run(s, Compact(5))
    assert s.events_since(5, b"", b"\0") == before[1:]
    assert before[1].type == EventType.DELETE


def test_events_since_validates_range() -> None:
    with pytest.raises(InvalidArgument):
        Store().events_since(0, b"b", b"a")
