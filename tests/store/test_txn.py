"""Txn: compares, branches, atomicity, nested txns, revisions and etcd's validation rules."""

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
    Txn,
    TxnResult,
)
from raftreg.store import Compact, LeaseGrant, Store

from .helpers import failure, get, keys, put, run, run_events

EQ, GT, LT, NE = (
    CompareResult.EQUAL,
    CompareResult.GREATER,
    CompareResult.LESS,
    CompareResult.NOT_EQUAL,
)
VERSION, CREATE, MOD, VALUE, LEASE = (
    CompareTarget.VERSION,
    CompareTarget.CREATE,
    CompareTarget.MOD,
    CompareTarget.VALUE,
    CompareTarget.LEASE,
)


def _store() -> Store:
    s = Store()
    run(s, LeaseGrant(7, 60))
    put(s, b"a", b"m")  # rev 2: create 2, mod 2, version 1
    put(s, b"a", b"m")  # rev 3: version 2
    put(s, b"b", b"x", lease=7)  # rev 4
    return s


def _holds(s: Store, *compare: Compare) -> bool:
    r = run(s, Txn(compare))
    assert isinstance(r, TxnResult), r
    return r.succeeded


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        (Compare(b"a", VERSION, EQ, 2), True),
        (Compare(b"a", VERSION, GT, 1), True),
        (Compare(b"a", VERSION, LT, 2), False),
        (Compare(b"a", VERSION, NE, 2), False),
        (Compare(b"a", CREATE, EQ, 2), True),
        (Compare(b"a", MOD, EQ, 3), True),
        (Compare(b"a", MOD, GT, 3), False),
        (Compare(b"a", VALUE, EQ, b"m"), True),
        (Compare(b"a", VALUE, GT, b"l"), True),
        (Compare(b"a", VALUE, LT, b"ma"), True),
        (Compare(b"a", VALUE, NE, b"m"), False),
        (Compare(b"b", LEASE, EQ, 7), True),
        (Compare(b"a", LEASE, EQ, 0), True),
        # missing key: version/create/mod/lease compare as 0
        (Compare(b"zz", VERSION, EQ, 0), True),
        (Compare(b"zz", CREATE, EQ, 0), True),
        (Compare(b"zz", MOD, LT, 1), True),
        (Compare(b"zz", LEASE, EQ, 0), True),
        # ... but a VALUE compare on a missing key is always false (etcd)
        (Compare(b"zz", VALUE, EQ, b""), False),
        (Compare(b"zz", VALUE, NE, b"q"), False),
        # range compares must hold for every key in the range
        (Compare(b"a", VERSION, GT, 0, range_end=b"c"), True),
        (Compare(b"a", VERSION, EQ, 2, range_end=b"c"), False),
        (Compare(b"", VALUE, NE, b"zzz", range_end=b"\0"), True),
        (Compare(b"c", VERSION, EQ, 0, range_end=b"z"), True),  # empty range => zero kv
        (Compare(b"c", VALUE, EQ, b"", range_end=b"z"), False),
    ],
)
def test_compare(compare: Compare, expected: bool) -> None:
    s = _store()
    assert _holds(s, compare) is expected
    assert s.revision == 4  # read-only txns do not bump the revision


def test_all_compares_must_hold() -> None:
    s = _store()
    assert _holds(s, Compare(b"a", VERSION, EQ, 2), Compare(b"b", VERSION, EQ, 1))
    assert not _holds(s, Compare(b"a", VERSION, EQ, 2), Compare(b"b", VERSION, EQ, 2))
    assert _holds(s)  # no compares: success


def test_branches_and_one_revision_for_all_writes() -> None:
    s = _store()
    txn = Txn(
        (Compare(b"a", VALUE, EQ, b"m"),),
        (Put(b"c", b"1"), Put(b"a", b"n", prev_kv=True), DeleteRange(b"b", prev_kv=True)),
        (Put(b"fail", b"1"),),
    )
    result, events = run_events(s, txn)
    prev_a = KeyValue(b"a", 2, 3, 2, b"m", 0)
    prev_b = KeyValue(b"b", 4, 4, 1, b"x", 7)
    assert result == TxnResult(
        5,
        True,
        (PutResult(5, None), PutResult(5, prev_a), DeleteResult(5, 1, (prev_b,))),
    )
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.PUT, b"c", 5),
        (EventType.PUT, b"a", 5),
        (EventType.DELETE, b"b", 5),
    ]
    assert s.revision == 5
    assert keys(s) == [b"a", b"c"]
    # lease lost its key
    lease = s.lease(7)
    assert lease is not None and lease.keys == set()
    # now the compare fails: failure branch
    result, _ = run_events(s, txn)
    assert result == TxnResult(6, False, (PutResult(6, None),))
    assert keys(s) == [b"a", b"c", b"fail"]


def test_reads_inside_txn_see_earlier_writes() -> None:
    s = _store()
    txn = Txn(
        (),
        (
            Range(b"", b"\0", count_only=True),
            Put(b"new", b"1"),
            Range(b"new"),
            DeleteRange(b"a"),
            Range(b"", b"\0", keys_only=True),
            Range(b"a", revision=4),  # an explicit revision reads the past
        ),
    )
    r = run(s, txn)
    assert isinstance(r, TxnResult)
    assert r.responses[0] == RangeResult(5, (), False, 2)
    assert r.responses[2] == RangeResult(5, (KeyValue(b"new", 5, 5, 1, b"1", 0),), False, 1)
    assert r.responses[3] == DeleteResult(5, 1, ())
    res4 = r.responses[4]
    assert isinstance(res4, RangeResult)
    assert [kv.key for kv in res4.kvs] == [b"b", b"new"]
    assert r.responses[5] == RangeResult(5, (KeyValue(b"a", 2, 3, 2, b"m", 0),), False, 1)


def test_nested_txn_compares_see_state_before_the_txn() -> None:
    # etcd evaluates every compare (nested included) before executing anything.
    s = _store()
    txn = Txn(
        (),
        (
            Put(b"c", b"1"),
            Txn((Compare(b"c", VERSION, EQ, 0),), (Put(b"d", b"then"),), (Put(b"d", b"else"),)),
        ),
    )
    r = run(s, txn)
    assert r == TxnResult(5, True, (PutResult(5), TxnResult(5, True, (PutResult(5),))))
    kv = get(s, b"d")
    assert kv is not None and kv.value == b"then"


def test_txn_atomic_on_unknown_lease() -> None:
    s = _store()
    before = s.snapshot()
    txn = Txn((), (Put(b"c", b"1"), DeleteRange(b"a"), Put(b"d", b"2", lease=99)))
    result, events = run_events(s, txn)
    f = failure(result, "LeaseNotFound")
    assert f.revision == 4
    assert events == []
    assert s.snapshot() == before


def test_txn_atomic_on_nested_failure() -> None:
    s = _store()
    before = s.snapshot()
    txn = Txn((), (Put(b"c", b"1"), Txn((), (Put(b"zz", ignore_value=True),))))
    failure(run(s, txn), "InvalidArgument")
    assert s.snapshot() == before
    # the failing op is on the branch not taken: fine
    ok = Txn((), (Put(b"c", b"1"), Txn((Compare(b"a", VERSION, EQ, 99),), (Put(b"d", lease=99),))))
    assert run(s, ok) == TxnResult(5, True, (PutResult(5), TxnResult(5, False, ())))


def test_txn_range_revision_errors_are_failures() -> None:
    s = _store()
    f = failure(run(s, Txn((), (Put(b"c"), Range(b"a", revision=5)))), "FutureRevision")
    assert f.revision == 4
    assert get(s, b"c") is None
    run(s, Compact(3))
    f = failure(run(s, Txn((), (Put(b"c"), Range(b"a", revision=2)))), "Compacted")
    assert f.compact_revision == 3
    assert get(s, b"c") is None


def test_txn_with_only_noop_deletes_keeps_revision() -> None:
    s = _store()
    r = run(s, Txn((), (DeleteRange(b"nope"),)))
    assert r == TxnResult(4, True, (DeleteResult(4, 0, ()),))
    assert s.revision == 4


def test_two_overlapping_deletes_are_allowed() -> None:
    s = _store()
    r = run(s, Txn((), (DeleteRange(b"a", b"c"), DeleteRange(b"b"))))
    assert r == TxnResult(5, True, (DeleteResult(5, 2, ()), DeleteResult(5, 0, ())))


DUP = "duplicate key given in txn request"


@pytest.mark.parametrize(
    ("txn", "ok"),
    [
        (Txn((), (Put(b"a"), Put(b"a"))), False),
        (Txn((), (Put(b"a"), Put(b"b"))), True),
        (Txn((), (Put(b"a"), DeleteRange(b"a"))), False),
        (Txn((), (DeleteRange(b"a"), Put(b"a"))), False),
        (Txn((), (DeleteRange(b"", b"\0"), Put(b"q"))), False),
        (Txn((), (DeleteRange(b"a", b"c"), Put(b"c"))), True),
        (Txn((), (DeleteRange(b"a", b"c"), Put(b"bz"))), False),
        (Txn((), (Put(b"a"),), (Put(b"a"),)), True),  # branches are separate
        (Txn((), (Put(b"a"), Txn((), (Put(b"a"),)))), False),
        (Txn((), (DeleteRange(b"a"), Txn((), (Put(b"a"),)))), False),
        (Txn((), (Txn((), (DeleteRange(b"a"),)), Put(b"a"))), False),
        (Txn((), (Txn((), (Put(b"a"),), (Put(b"a"),)),)), True),  # then/else exclusive
        (Txn((), (Txn((), (Put(b"a"),)), Txn((), (), (Put(b"a"),)))), False),
    ],
)
def test_duplicate_key_rules(txn: Txn, ok: bool) -> None:
    s = Store()
    r = run(s, txn)
    if ok:
        assert isinstance(r, TxnResult), r
    else:
        assert failure(r, "InvalidArgument").message == DUP


def test_too_many_ops() -> None:
    s = Store(max_txn_ops=3)
    assert isinstance(run(s, Txn((), tuple(Put(bytes([65 + i])) for i in range(3)))), TxnResult)
    f = failure(run(s, Txn((), tuple(Put(bytes([65 + i])) for i in range(4)))), "InvalidArgument")
    assert f.message == "too many operations in txn request"
    many_compares = tuple(Compare(b"a", VERSION, EQ, 0) for _ in range(4))
    failure(run(s, Txn(many_compares)), "InvalidArgument")
    nested = Txn((), (Txn((), tuple(Range(b"a") for _ in range(4))),))
    failure(run(s, nested), "InvalidArgument")


def test_too_deep_nesting_rejected() -> None:
    t = Txn()
    for _ in range(40):
        t = Txn((), (t,))
    f = failure(run(Store(), t), "InvalidArgument")
    assert "nested" in f.message
