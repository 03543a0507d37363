"""The watch validator on hand-made streams: each property it promises, broken on purpose."""

from __future__ import annotations

import pytest

from raftreg.common.types import Event, EventType, KeyValue
from raftreg.testing.history import WatchRecord
from raftreg.testing.watchcheck import check_committed, check_watch

pytestmark = pytest.mark.timeout(10)


def put(key: bytes, rev: int, value: bytes, version: int, create: int,
        prev: KeyValue | None = None) -> Event:
    return Event(EventType.PUT, KeyValue(key, create, rev, version, value), prev)


def delete(key: bytes, rev: int, prev: KeyValue | None) -> Event:
    return Event(EventType.DELETE, KeyValue(key, 0, rev, 0, b""), prev)


A, B = b"/f/a", b"/f/b"
a2 = put(A, 2, b"1", 1, 2)
b2 = put(B, 2, b"x", 1, 2)  # a txn: two keys at revision 2
a3 = put(A, 3, b"2", 2, 2, a2.kv)
b4 = delete(B, 4, b2.kv)
a5 = put(A, 5, b"3", 3, 2, a3.kv)
COMMITTED = [a2, b2, a3, b4, a5]


def rec(*segments: tuple[int, list[tuple[int, list[Event]]]], prev_kv: bool = True) -> WatchRecord:
    return WatchRecord("t", b"/f/", b"/f0", prev_kv, list(segments))


def test_a_correct_stream_passes() -> None:
    assert check_committed(COMMITTED) == []
    r = rec((1, [(2, [a2, b2]), (3, [a3]), (5, [b4, a5])]))
    assert check_watch(r, COMMITTED, complete=True) == []


def test_resumed_stream_passes_and_bad_resume_is_caught() -> None:
    good = rec((1, [(2, [a2, b2])]), (3, [(5, [a3, b4, a5])]))
    assert check_watch(good, COMMITTED, complete=True) == []
    bad = rec((1, [(2, [a2, b2])]), (4, [(5, [b4, a5])]))
    assert any("resumes at 4" in v for v in check_watch(bad, COMMITTED, complete=True))


def test_gap_is_caught() -> None:
    r = rec((1, [(2, [a2, b2]), (5, [b4, a5])]))
    assert any("gap" in v for v in check_watch(r, COMMITTED, complete=True))


def test_duplicate_and_disorder_are_caught() -> None:
    dup = rec((1, [(2, [a2, b2]), (3, [a3]), (3, [a3])]))
    assert any("duplicate" in v for v in check_watch(dup, COMMITTED, complete=False))
    across = rec((1, [(3, [a2, b2, a3])]), (4, [(4, [b4])]), (5, [(5, [b4, a5])]))
    assert check_watch(across, COMMITTED, complete=True) != []


def test_split_revision_is_caught() -> None:
    r = rec((1, [(2, [a2]), (2, [b2]), (3, [a3]), (5, [b4, a5])]))
    assert any("not whole" in v for v in check_watch(r, COMMITTED, complete=True))


def test_wrong_or_unwanted_prev_kv_is_caught() -> None:
    wrong = put(A, 3, b"2", 2, 2, None)
    r = rec((1, [(2, [a2, b2]), (3, [wrong]), (5, [b4, a5])]))
    assert any("prev_kv" in v for v in check_watch(r, COMMITTED, complete=True))
    r2 = rec((1, [(2, [a2, b2]), (3, [a3])]), prev_kv=False)
    assert any("not requested" in v for v in check_watch(r2, COMMITTED, complete=False))


def test_incomplete_and_invented_events_are_caught() -> None:
    r = rec((1, [(2, [a2, b2])]))
    assert any("incomplete" in v for v in check_watch(r, COMMITTED, complete=True))
    ghost = put(A, 6, b"9", 4, 2, a5.kv)
    r2 = rec((1, [(2, [a2, b2]), (3, [a3]), (5, [b4, a5]), (6, [ghost])]))
    assert any("nothing on the range" in v for v in check_watch(r2, COMMITTED, complete=True))


def test_committed_history_self_check() -> None:
    assert check_committed([a2, put(A, 3, b"2", 1, 3, a2.kv)])  # version not bumped
    assert check_committed([delete(A, 2, None)])  # delete of an absent key
    assert check_committed([a3, a2])  # goes back


def test_deliveries_after_the_end_of_the_read_history_are_not_judged() -> None:
    """Regression (soak seed 1050): watches keep running while the committed history is read
    up to the sentinel write; a lease expiring after it was reported as "nothing committed"."""
    b6 = delete(B, 6, None)
    r = rec((1, [(2, [a2, b2]), (3, [a3]), (5, [b4, a5]), (6, [b6])]))
    assert any("nothing on the range" in v for v in check_watch(r, COMMITTED, complete=True))
    assert check_watch(r, COMMITTED, complete=True, until=5) == []
