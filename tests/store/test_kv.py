"""Put / DeleteRange / Range semantics, revisions and static validation (etcd v3 rules)."""

from __future__ import annotations

import pytest

from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    EventType,
    KeyValue,
    Put,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
)
from raftreg.errors import Compacted, FutureRevision, InvalidArgument
from raftreg.store import Compact, Done, LeaderEpoch, LeaseGrant, Store

from .helpers import failure, get, keys, put, run, run_events


def test_empty_store_starts_at_revision_one() -> None:
    s = Store()
    assert s.revision == 1
    assert s.compact_revision == 0
    assert s.key_count() == 0
    assert s.range(Range(b"", b"\0")) == RangeResult(1, (), False, 0)


def test_put_creates_then_versions() -> None:
    s = Store()
    assert run(s, Put(b"a", b"1")) == PutResult(2, None)
    assert get(s, b"a") == KeyValue(b"a", 2, 2, 1, b"1", 0)
    assert run(s, Put(b"b", b"x")) == PutResult(3, None)
    r = run(s, Put(b"a", b"2", prev_kv=True))
    assert r == PutResult(4, KeyValue(b"a", 2, 2, 1, b"1", 0))
    assert get(s, b"a") == KeyValue(b"a", 2, 4, 2, b"2", 0)
    assert s.revision == 4
    assert s.key_count() == 2


def test_put_prev_kv_absent_when_not_asked_or_new() -> None:
    s = Store()
    assert run(s, Put(b"a", b"1", prev_kv=True)) == PutResult(2, None)
    assert run(s, Put(b"a", b"2")) == PutResult(3, None)


def test_delete_then_recreate_restarts_version_and_create_revision() -> None:
    s = Store()
    put(s, b"a", b"1")
    put(s, b"a", b"2")
    r = run(s, DeleteRange(b"a", prev_kv=True))
    assert r == DeleteResult(4, 1, (KeyValue(b"a", 2, 3, 2, b"2", 0),))
    assert get(s, b"a") is None
    assert s.key_count() == 0
    put(s, b"a", b"3")
    assert get(s, b"a") == KeyValue(b"a", 5, 5, 1, b"3", 0)


def test_delete_nothing_does_not_bump_revision() -> None:
    s = Store()
    put(s, b"a")
    result, events = run_events(s, DeleteRange(b"zz"))
    assert result == DeleteResult(2, 0, ())
    assert events == []
    assert s.revision == 2
    # a deleted key deleted again changes nothing either
    run(s, DeleteRange(b"a"))
    assert s.revision == 3
    assert run(s, DeleteRange(b"a")) == DeleteResult(3, 0, ())


def test_delete_range_and_prefix() -> None:
    s = Store()
    for k in (b"a", b"b", b"c", b"d"):
        put(s, k)
    result, events = run_events(s, DeleteRange(b"b", b"d"))
    assert result == DeleteResult(6, 2, ())
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.DELETE, b"b", 6),
        (EventType.DELETE, b"c", 6),
    ]
    assert keys(s) == [b"a", b"d"]
    assert run(s, DeleteRange(b"", b"\0")) == DeleteResult(7, 2, ())
    assert keys(s) == []


def test_delete_event_shape() -> None:
    s = Store()
    put(s, b"k", b"v")
    _, events = run_events(s, DeleteRange(b"k"))
    assert len(events) == 1
    e = events[0]
    assert e.type == EventType.DELETE
    assert e.kv == KeyValue(b"k", 0, 3, 0, b"", 0)
    assert e.prev_kv == KeyValue(b"k", 2, 2, 1, b"v", 0)


def test_put_event_has_prev_kv_always() -> None:
    s = Store()
    _, ev1 = run_events(s, Put(b"k", b"1"))
    _, ev2 = run_events(s, Put(b"k", b"2"))
    assert ev1[0].type == EventType.PUT and ev1[0].prev_kv is None
    assert ev2[0].kv == KeyValue(b"k", 2, 3, 2, b"2", 0)
    assert ev2[0].prev_kv == KeyValue(b"k", 2, 2, 1, b"1", 0)


@pytest.mark.parametrize(
    ("key", "range_end", "expected"),
    [
        (b"b", b"", [b"b"]),
        (b"bb", b"", []),
        (b"b", b"d", [b"b", b"ba", b"c"]),
        (b"b", b"b", []),
        (b"b", b"\0", [b"b", b"ba", b"c", b"d"]),
        (b"", b"\0", [b"a", b"b", b"ba", b"c", b"d"]),
        (b"\0", b"\0", [b"a", b"b", b"ba", b"c", b"d"]),
        (b"b", b"c", [b"b", b"ba"]),  # prefix b"b"
    ],
)
def test_range_selection(key: bytes, range_end: bytes, expected: list[bytes]) -> None:
    s = Store()
    for k in (b"d", b"b", b"a", b"c", b"ba"):
        put(s, k)
    assert keys(s, key, range_end) == expected
    assert s.range(Range(key, range_end)).count == len(expected)


def _sorted_store() -> Store:
    s = Store()
    put(s, b"a", b"3")  # rev 2
    put(s, b"b", b"1")  # rev 3
    put(s, b"c", b"2")  # rev 4
    put(s, b"b", b"4")  # rev 5: b version 2
    return s


@pytest.mark.parametrize(
    ("order", "target", "expected"),
    [
        (SortOrder.NONE, SortTarget.KEY, [b"a", b"b", b"c"]),
        (SortOrder.ASCEND, SortTarget.KEY, [b"a", b"b", b"c"]),
        (SortOrder.DESCEND, SortTarget.KEY, [b"c", b"b", b"a"]),
        (SortOrder.NONE, SortTarget.VALUE, [b"c", b"a", b"b"]),  # NONE + target => ascend
        (SortOrder.ASCEND, SortTarget.VALUE, [b"c", b"a", b"b"]),
        (SortOrder.DESCEND, SortTarget.VALUE, [b"b", b"a", b"c"]),
        (SortOrder.ASCEND, SortTarget.MOD, [b"a", b"c", b"b"]),
        (SortOrder.DESCEND, SortTarget.MOD, [b"b", b"c", b"a"]),
        (SortOrder.ASCEND, SortTarget.CREATE, [b"a", b"b", b"c"]),
        (SortOrder.DESCEND, SortTarget.CREATE, [b"c", b"b", b"a"]),
        # version ties (a, c = 1) keep key order, also when descending
        (SortOrder.ASCEND, SortTarget.VERSION, [b"a", b"c", b"b"]),
        (SortOrder.DESCEND, SortTarget.VERSION, [b"b", b"a", b"c"]),
    ],
)
def test_range_sort(order: SortOrder, target: SortTarget, expected: list[bytes]) -> None:
    s = _sorted_store()
    r = s.range(Range(b"", b"\0", sort_order=order, sort_target=target))
    assert [kv.key for kv in r.kvs] == expected


def test_range_limit_count_more() -> None:
    s = _sorted_store()
    r = s.range(Range(b"", b"\0", limit=2))
    assert [kv.key for kv in r.kvs] == [b"a", b"b"]
    assert (r.more, r.count, r.revision) == (True, 3, 5)
    r = s.range(Range(b"", b"\0", limit=3))
    assert (len(r.kvs), r.more, r.count) == (3, False, 3)
    # limit applies after sorting
    r = s.range(Range(b"", b"\0", limit=1, sort_order=SortOrder.DESCEND))
    assert [kv.key for kv in r.kvs] == [b"c"]
    assert r.more


def test_range_count_only_and_keys_only() -> None:
    s = _sorted_store()
    assert s.range(Range(b"", b"\0", count_only=True)) == RangeResult(5, (), False, 3)
    assert s.range(Range(b"", b"\0", count_only=True, limit=1)) == RangeResult(5, (), False, 3)
    r = s.range(Range(b"a", b"c", keys_only=True))
    assert r.kvs == (KeyValue(b"a", 2, 2, 1, b"", 0), KeyValue(b"b", 3, 5, 2, b"", 0))


def test_range_at_past_revision() -> None:
    s = Store()
    put(s, b"a", b"1")  # 2
    put(s, b"b", b"1")  # 3
    put(s, b"a", b"2")  # 4
    run(s, DeleteRange(b"b"))  # 5
    assert keys(s, revision=1) == []
    assert keys(s, revision=2) == [b"a"]
    assert keys(s, revision=4) == [b"a", b"b"]
    assert keys(s, revision=5) == [b"a"]
    assert get(s, b"a", revision=3) == KeyValue(b"a", 2, 2, 1, b"1", 0)
    assert get(s, b"a", revision=4) == KeyValue(b"a", 2, 4, 2, b"2", 0)
    r = s.range(Range(b"a", revision=3))
    assert r.revision == 5  # header revision is the current one, as in etcd


def test_range_revision_errors() -> None:
    s = Store()
    for i in range(5):
        put(s, b"k", str(i).encode())  # revisions 2..6
    with pytest.raises(FutureRevision):
        s.range(Range(b"k", revision=7))
    assert get(s, b"k", revision=6) is not None
    assert run(s, Compact(4)) == Done(6)
    with pytest.raises(Compacted) as exc:
        s.range(Range(b"k", revision=3))
    assert exc.value.compact_revision == 4
    assert get(s, b"k", revision=4) == KeyValue(b"k", 2, 4, 3, b"2", 0)


def test_revision_unchanged_by_non_writes() -> None:
    s = Store()
    put(s, b"a")
    assert run(s, LeaderEpoch(1)) == Done(2)
    run(s, LeaseGrant(1, 10))
    run(s, Txn((), (Range(b"a"),)))
    run(s, Compact(2))
    assert s.revision == 2


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Put(b"", b"v"), "key is not provided"),
        (Put(b"k", b"x" * 11), "value is too large"),
        (Put(b"k", b"v", ignore_value=True), "value is provided"),
        (Put(b"k", lease=3, ignore_lease=True), "lease is provided"),
        (DeleteRange(b""), "key is not provided"),
        (DeleteRange(b"b", b"a"), "range_end must not be less than key"),
        (Compact(0), "compact revision must be positive"),
        (Compact(-3), "compact revision must be positive"),
        (LeaseGrant(0, 10), "lease id must be positive"),
        (LeaseGrant(-1, 10), "lease id must be positive"),
        (LeaseGrant(1, 0), "lease ttl must be positive"),
        (Txn((), (Range(b"k", revision=-1),)), "revision must not be negative"),
        (Txn((), (Range(b"k", limit=-1),)), "limit must not be negative"),
        (Txn((), (Range(b""),)), "key is not provided"),
        (Txn((), (Range(b"z", b"a"),)), "range_end must not be less than key"),
        (
            Txn((Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, 1),)),
            "compare operand must be bytes",
        ),
        (
            Txn((Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, b"1"),)),
            "compare operand must be an integer",
        ),
        (
            Txn((Compare(b"k", CompareTarget.MOD, CompareResult.EQUAL, True),)),
            "compare operand must be an integer",
        ),
        (Txn((Compare(b"", CompareTarget.VERSION, CompareResult.EQUAL, 1),)), "key is not"),
        (Range(b"k"), "not a command"),
        (Put(b"k", "str-value"), "value must be bytes"),  # type: ignore[arg-type]
    ],
)
def test_validation(command: Put, message: str) -> None:
    s = Store(max_value_bytes=10)
    with pytest.raises(InvalidArgument, match=message):
        s.validate(command)
    before = s.snapshot()
    f = failure(run(s, command), "InvalidArgument")
    assert message in f.message
    assert f.revision == 1
    assert s.snapshot() == before


def test_value_at_limit_is_accepted() -> None:
    s = Store(max_value_bytes=10)
    assert run(s, Put(b"k", b"x" * 10)) == PutResult(2, None)


def test_range_validation_raises() -> None:
    s = Store()
    with pytest.raises(InvalidArgument, match="key is not provided"):
        s.range(Range(b""))
    with pytest.raises(InvalidArgument, match="negative"):
        s.range(Range(b"a", revision=-1))
    with pytest.raises(InvalidArgument, match="negative"):
        s.range(Range(b"a", limit=-5))
    with pytest.raises(InvalidArgument):
        s.range(Range(b"b", b"a"))


def test_apply_rejects_non_requests() -> None:
    s = Store()
    result, events = s.apply(Put(b"a"))  # type: ignore[arg-type]
    assert failure(result, "InvalidArgument").revision == 1
    assert events == []


def test_revision_bounds_filter_before_sort_and_limit_and_count_is_taken_before() -> None:
    # etcd's RangeRequest min/max_mod/create_revision, as clientv3's Mutex uses them
    # (WithLastCreate + WithMaxCreateRev: the newest waiter created before me).
    s = Store()
    put(s, b"l/a", b"1")  # rev 2
    put(s, b"l/b", b"2")  # rev 3
    put(s, b"l/c", b"3")  # rev 4
    put(s, b"l/a", b"4")  # rev 5: a's mod moves, its create stays 2
    last_before_c = Range(b"l/", b"l0", sort_order=SortOrder.DESCEND,
                          sort_target=SortTarget.CREATE, limit=1, max_create_revision=3)
    r = s.range(last_before_c)
    assert [kv.key for kv in r.kvs] == [b"l/b"] and r.more and r.count == 3
    assert _keys(s.range(Range(b"l/", b"l0", min_mod_revision=4))) == [b"l/a", b"l/c"]
    assert _keys(s.range(Range(b"l/", b"l0", max_mod_revision=3))) == [b"l/b"]
    assert _keys(s.range(Range(b"l/", b"l0", min_create_revision=3, max_create_revision=3))) == [
        b"l/b"]
    # more: only when the filtered result is longer than the limit
    r = s.range(Range(b"l/", b"l0", limit=1, min_create_revision=4))
    assert _keys(r) == [b"l/c"] and not r.more and r.count == 3
    with pytest.raises(InvalidArgument, match="max_mod_revision must not be negative"):
        s.range(Range(b"l/", b"l0", max_mod_revision=-1))


def _keys(r: RangeResult) -> list[bytes]:
    return [kv.key for kv in r.kvs]
