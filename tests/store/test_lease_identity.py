"""Leases (grant, attach, move, revoke, expire) and request identity (dedup)."""

from __future__ import annotations

from raftreg.common.types import (
    DeleteRange,
    EventType,
    KeyValue,
    LeaseGrantResult,
    Put,
    PutResult,
    Txn,
    TxnResult,
)
from raftreg.store import (
    Done,
    ExpireClients,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseInfo,
    LeaseRevoke,
    Request,
    Store,
)

from .helpers import failure, get, keys, put, run, run_events


def test_grant_and_duplicate() -> None:
    s = Store()
    assert run(s, LeaseGrant(5, 30)) == LeaseGrantResult(1, 5, 30)
    assert s.lease(5) == LeaseInfo(5, 30, set(), -1)
    f = failure(run(s, LeaseGrant(5, 60)), "AlreadyExists")
    assert f.revision == 1
    assert s.lease(5) == LeaseInfo(5, 30, set(), -1)
    assert s.lease(6) is None


def test_leases_sorted_and_copies() -> None:
    s = Store()
    for i in (9, 2, 5):
        run(s, LeaseGrant(i, i))
    assert [lease.id for lease in s.leases()] == [2, 5, 9]
    put(s, b"k", lease=2)
    copy = s.lease(2)
    assert copy is not None
    copy.keys.add(b"evil")
    assert s.lease(2) == LeaseInfo(2, 2, {b"k"}, -1)


def test_put_with_unknown_lease_fails_and_changes_nothing() -> None:
    s = Store()
    put(s, b"k", b"1")
    before = s.snapshot()
    result, events = run_events(s, Put(b"k", b"2", lease=42))
    assert failure(result, "LeaseNotFound").revision == 2
    assert events == []
    assert s.snapshot() == before


def test_attach_move_detach() -> None:
    s = Store()
    run(s, LeaseGrant(1, 10))
    run(s, LeaseGrant(2, 10))
    put(s, b"a", lease=1)
    put(s, b"b", lease=1)
    assert s.lease(1) == LeaseInfo(1, 10, {b"a", b"b"}, -1)
    put(s, b"a", lease=2)  # move
    assert s.lease(1) == LeaseInfo(1, 10, {b"b"}, -1)
    assert s.lease(2) == LeaseInfo(2, 10, {b"a"}, -1)
    put(s, b"b")  # detach by putting without lease
    assert s.lease(1) == LeaseInfo(1, 10, set(), -1)
    run(s, DeleteRange(b"a"))  # detach by delete
    assert s.lease(2) == LeaseInfo(2, 10, set(), -1)


def test_ignore_value_and_ignore_lease() -> None:
    s = Store()
    run(s, LeaseGrant(1, 10))
    put(s, b"k", b"orig", lease=1)
    assert run(s, Put(b"k", b"", ignore_value=True, lease=0)) == PutResult(3)
    assert get(s, b"k") == KeyValue(b"k", 2, 3, 2, b"orig", 0)
    assert s.lease(1) == LeaseInfo(1, 10, set(), -1)
    put(s, b"k", b"v2", lease=1)
    assert run(s, Put(b"k", b"v3", ignore_lease=True)) == PutResult(5)
    assert get(s, b"k") == KeyValue(b"k", 2, 5, 4, b"v3", 1)
    assert s.lease(1) == LeaseInfo(1, 10, {b"k"}, -1)
    f = failure(run(s, Put(b"missing", ignore_value=True)), "InvalidArgument")
    assert f.message == "key not found"
    failure(run(s, Put(b"missing", b"x", ignore_lease=True)), "InvalidArgument")
    assert s.revision == 5


def test_revoke_deletes_keys_at_one_revision_sorted() -> None:
    s = Store()
    run(s, LeaseGrant(1, 10))
    put(s, b"c", lease=1)
    put(s, b"a", lease=1)
    put(s, b"b")
    result, events = run_events(s, LeaseRevoke(1))
    assert result == Done(5)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.DELETE, b"a", 5),
        (EventType.DELETE, b"c", 5),
    ]
    assert events[0].prev_kv == KeyValue(b"a", 3, 3, 1, b"v", 1)
    assert keys(s) == [b"b"]
    assert s.lease(1) is None
    assert failure(run(s, LeaseRevoke(1)), "LeaseNotFound").revision == 5


def test_revoke_lease_without_keys_costs_no_revision() -> None:
    s = Store()
    run(s, LeaseGrant(1, 10))
    assert run_events(s, LeaseRevoke(1)) == (Done(1), [])
    assert s.leases() == []


def test_expire_in_order_each_own_revision() -> None:
    s = Store()
    for i in (1, 2, 3):
        run(s, LeaseGrant(i, 10))
    put(s, b"x", lease=2)  # rev 2
    put(s, b"y", lease=1)  # rev 3
    result, events = run_events(s, LeaseExpire((2, 99, 3, 1, 2)))
    assert result == Done(5)
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(b"x", 4), (b"y", 5)]
    assert s.leases() == []
    assert s.key_count() == 0


def test_txn_put_attaches_lease() -> None:
    s = Store()
    run(s, LeaseGrant(3, 10))
    r = run(s, Txn((), (Put(b"a", lease=3), Put(b"b", lease=3))))
    assert isinstance(r, TxnResult) and r.revision == 2
    assert s.lease(3) == LeaseInfo(3, 10, {b"a", b"b"}, -1)


# --- request identity ------------------------------------------------------------------------


def test_duplicate_request_returns_remembered_result() -> None:
    s = Store()
    req = Request(Put(b"k", b"1"), now_ms=100, client_id=7, seq=1)
    first = s.apply(req)
    assert first[0] == PutResult(2)
    assert len(first[1]) == 1
    put(s, b"other")
    again = s.apply(req)
    assert again == (PutResult(2), [])
    assert s.revision == 3
    kv = get(s, b"k")
    assert kv is not None and kv.version == 1
    # same seq from another client is a different request
    assert s.apply(Request(Put(b"k", b"1"), client_id=8, seq=1))[0] == PutResult(4)
    # seq 0 means no identity: always applied
    s.apply(Request(Put(b"k", b"2"), client_id=7))
    s.apply(Request(Put(b"k", b"2"), client_id=7))
    assert s.revision == 6


def test_failures_are_remembered_too() -> None:
    s = Store()
    req = Request(Put(b"k", lease=5), client_id=1, seq=1)
    assert failure(s.apply(req)[0], "LeaseNotFound").revision == 1
    run(s, LeaseGrant(5, 10))
    # the retry gets the original answer, not a new application
    assert failure(s.apply(req)[0], "LeaseNotFound").revision == 1
    assert s.key_count() == 0


def test_window_and_too_old() -> None:
    s = Store(client_window=3)
    for seq in range(1, 6):
        assert s.apply(Request(Put(b"k", str(seq).encode()), client_id=1, seq=seq))[1]
    # window is (5 - 3, 5] = {3, 4, 5}
    assert s.apply(Request(Put(b"k"), client_id=1, seq=3)) == (PutResult(4), [])
    f = failure(s.apply(Request(Put(b"k"), client_id=1, seq=2))[0], "FailedPrecondition")
    assert f.message == "request id too old"
    assert s.revision == 6
    # out-of-order arrival inside the window is applied once
    assert s.apply(Request(Put(b"j"), client_id=1, seq=10))[0] == PutResult(7)
    assert s.apply(Request(Put(b"i"), client_id=1, seq=9))[0] == PutResult(8)
    assert s.apply(Request(Put(b"i"), client_id=1, seq=9)) == (PutResult(8), [])
    failure(s.apply(Request(Put(b"h"), client_id=1, seq=7))[0], "FailedPrecondition")
    # a huge jump evicts everything below the new floor
    assert s.apply(Request(Put(b"h"), client_id=1, seq=10**12))[0] == PutResult(9)
    failure(s.apply(Request(Put(b"h"), client_id=1, seq=10))[0], "FailedPrecondition")


def test_expire_clients() -> None:
    s = Store()
    s.apply(Request(Put(b"a"), now_ms=1000, client_id=1, seq=1))
    s.apply(Request(Put(b"b"), now_ms=5000, client_id=2, seq=1))
    assert run(s, ExpireClients(idle_before_ms=3000)) == Done(3)
    # client 1 forgotten: its retry applies again; client 2 still deduplicated
    assert s.apply(Request(Put(b"a"), now_ms=6000, client_id=1, seq=1))[0] == PutResult(4)
    assert s.apply(Request(Put(b"b"), now_ms=6000, client_id=2, seq=1)) == (PutResult(3), [])
    # last-seen is refreshed by new requests
    s.apply(Request(Txn(), now_ms=9000, client_id=2, seq=2))  # a request that writes nothing
    run(s, ExpireClients(idle_before_ms=8000))
    assert s.apply(Request(Put(b"a"), now_ms=9500, client_id=1, seq=1))[0] == PutResult(5)
    assert s.apply(Request(Put(b"b"), now_ms=9500, client_id=2, seq=1)) == (PutResult(3), [])


def test_a_deposed_leaders_expiry_is_ignored_after_a_newer_leader_announced_itself() -> None:
    """LeaseExpire decided in term 3 and applied after LeaderEpoch(4) changes nothing (the
    consensus layer may forward a deposed leader's proposal to the new leader)."""
    s = Store()
    run(s, LeaseGrant(1, 10))
    run(s, Put(b"k", b"v", lease=1))
    run(s, LeaderEpoch(3))
    run(s, LeaderEpoch(4))
    before = s.revision
    _, events = run_events(s, LeaseExpire((1,), term=3))
    assert events == [] and s.revision == before and s.lease(1) is not None
    assert s.leader_epoch == 4
    run(s, LeaderEpoch(2))  # epochs never go back
    assert s.leader_epoch == 4
    _, events = run_events(s, LeaseExpire((1,), term=4))
    assert [e.kv.key for e in events] == [b"k"] and s.lease(1) is None


def test_leader_epoch_survives_snapshot_and_counts_in_the_hash() -> None:
    s = Store()
    h0 = s.hash()
    run(s, LeaderEpoch(5))
    assert s.hash() != h0
    t = Store()
    t.restore(s.snapshot())
    assert t.leader_epoch == 5 and t.hash() == s.hash()


def test_checkpoints_record_clear_and_skip_missing_leases() -> None:
    s = Store()
    run(s, LeaseGrant(1, 600))
    run(s, LeaseGrant(2, 600))
    run(s, Put(b"k", b"v", lease=1))
    before = s.revision
    assert s.lease_checkpoints() == {}
    assert run(s, LeaseCheckpoint(((1, 400_000), (2, 599_001), (7, 5)), term=1)) == Done(before)
    assert s.revision == before, "a checkpoint changes no key and costs no revision"
    assert s.lease_checkpoints() == {1: 400_000, 2: 599_001}
    assert s.lease_checkpoints([2, 3]) == {2: 599_001}
    assert s.lease(1) == LeaseInfo(1, 600, {b"k"}, 400_000)
    run(s, LeaseCheckpoint(((1, -1),), term=1))
    assert s.lease_checkpoints() == {2: 599_001}
    assert s.lease(1) == LeaseInfo(1, 600, {b"k"}, -1)
    run(s, LeaseRevoke(2))
    assert s.lease_checkpoints() == {}
    run(s, LeaseGrant(2, 30))  # the id again: a new lease, not checkpointed
    assert s.lease(2) == LeaseInfo(2, 30, set(), -1)


def test_a_deposed_leaders_checkpoint_is_ignored_after_a_newer_leader_announced_itself() -> None:
    """A remaining TTL recorded in term 3 and applied after LeaderEpoch(4) is dropped: the new
    leader may have renewed the lease since, and a stale checkpoint would cut that renewal."""
    s = Store()
    run(s, LeaseGrant(1, 600))
    run(s, LeaderEpoch(3))
    run(s, LeaseCheckpoint(((1, 300_000),), term=3))
    run(s, LeaderEpoch(4))
    run(s, LeaseCheckpoint(((1, 1_000),), term=3))
    assert s.lease_checkpoints() == {1: 300_000}
    run(s, LeaseCheckpoint(((1, -1),), term=3))
    assert s.lease_checkpoints() == {1: 300_000}
    run(s, LeaseCheckpoint(((1, -1),), term=4))
    assert s.lease_checkpoints() == {}


def test_checkpoints_survive_snapshot_and_count_in_the_hash() -> None:
    s = Store()
    run(s, LeaseGrant(1, 600))
    run(s, LeaseGrant(2, 600))
    h0 = s.hash()
    run(s, LeaseCheckpoint(((2, 123_456),), term=0))
    assert s.hash() != h0
    t = Store()
    t.restore(s.snapshot())
    assert t.lease_checkpoints() == {2: 123_456} and t.hash() == s.hash()
    run(t, LeaseCheckpoint(((2, -1),), term=0))
    assert t.hash() == h0
