"""Codec round trips and rejection of garbage; snapshot/restore and hash."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    Put,
    Range,
    SortOrder,
    SortTarget,
    Txn,
)
from raftreg.errors import (
    AlreadyExists,
    Compacted,
    FailedPrecondition,
    InvalidArgument,
    LeaseNotFound,
    RegistryError,
)
from raftreg.store import (
    Command,
    Compact,
    Done,
    ExpireClients,
    Failure,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    MemberUpdate,
    Request,
    Store,
    decode_request,
    encode_request,
    failure_to_error,
)
from raftreg.store.codec import result_from_obj, result_to_obj

from .helpers import put, run

COMMANDS: list[Command] = [
    Put(b"k", b"v"),
    Put(b"k\x00\xff", b"", lease=2**62, prev_kv=True, ignore_value=True, ignore_lease=True),
    DeleteRange(b"a", b"\0", prev_kv=True),
    Txn(),
    Txn(
        (
            Compare(b"a", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x"),
            Compare(b"a", CompareTarget.MOD, CompareResult.LESS, -5, range_end=b"b"),
        ),
        (
            Range(b"a", b"z", 3, 10, SortOrder.DESCEND, SortTarget.MOD, True, False),
            Put(b"p"),
            Txn((), (DeleteRange(b"q"),), (Range(b"r", count_only=True),)),
        ),
        (DeleteRange(b"x"),),
    ),
    Txn((), (Range(b"a", b"\0", min_mod_revision=2, max_create_revision=9),), ()),
    MemberUpdate(6, "127.0.0.1:7", "127.0.0.1:7", ""),  # added by etcd's MemberAdd
    Compact(12),
    LeaseGrant(1, 30),
    LeaseRevoke(-1),
    LeaseExpire(()),
    LeaseExpire((3, 1, 2)),
    LeaseExpire((3,), term=7),
    MemberUpdate(5, "n4", "127.0.0.1:1", "127.0.0.1:2"),
    MemberUpdate(5, "n4", "127.0.0.1:1", "127.0.0.1:2", removed=True),
    LeaderEpoch(7),
    LeaseCheckpoint((), 1),
    LeaseCheckpoint(((5, 1_500), (9, -1), (2**62, 0)), term=3),
    ExpireClients(1_700_000_000_000),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_request_round_trip(command: Command) -> None:
    req = Request(command, now_ms=123, client_id=2**63 - 1, seq=9)
    data = encode_request(req)
    assert isinstance(data, bytes)
    assert decode_request(data) == req
    assert encode_request(decode_request(data)) == data


def test_decoded_enums_are_enums() -> None:
    txn = COMMANDS[4]
    decoded = decode_request(encode_request(Request(txn))).command
    assert isinstance(decoded, Txn)
    assert type(decoded.compare[0].target) is CompareTarget
    rng = decoded.success[0]
    assert isinstance(rng, Range) and type(rng.sort_order) is SortOrder


def test_retired_tags_are_refused_by_name() -> None:
    """Tags 8 (lease checkpoint), 10 (barrier) and the batch envelope 2 were never written to a
    log; they stay reserved and decoding one says so (today's `LeaseCheckpoint` is tag 14)."""
    for data, what in ((_pk([1, 0, 0, 0, [8, [[1, 500]]]]), "lease checkpoint"),
                       (_pk([1, 0, 0, 0, [10]]), "barrier"),
                       (_pk([2, [_pk([1, 0, 0, 0, [4, 1]])]]), "batch")):
        with pytest.raises(InvalidArgument, match=f"retired .*{what}"):
            decode_request(data)


def _pk(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


GARBAGE: list[bytes] = [
    b"",
    b"\xc1",  # never-used msgpack byte
    b"\x93\x01\x02",  # truncated array
    _pk([1, 0, 0, 0, [1, b"k", b"v", 0, False, False, False]]) + b"\x00",  # trailing data
    _pk("hello"),
    _pk({"a": 1}),
    _pk([]),
    _pk([3, 0, 0, 0, [10]]),  # unknown envelope tag
    _pk([1, 0, 0, 0, [99]]),  # unknown command tag
    _pk([1, 0, 0, 0, [11, b"k", b"", 0, 0, 0, 0, False, False]]),  # Range at top level
    _pk([1, 0, 0, 0, [1, "k", b"v", 0, False, False, False]]),  # str key
    _pk([1, 0, 0, 0, [1, b"k", b"v", True, False, False, False]]),  # bool lease
    _pk([1, 0, 0, 0, [1, b"k", b"v", 0, 0, False, False]]),  # int flag
    _pk([1, 0, 0, 0, [1, b"k", b"v", 0.5, False, False, False]]),  # float
    _pk([1, 0, 0, 0, [1, b"k", b"v", 0, False, False]]),  # missing field
    _pk([1, 0, 0, 0, [10, 1]]),  # extra field
    _pk([1, 0, 0, 0, [14, [[1]], 1]]),  # checkpoint pair without its remaining ms
    _pk([1, 0, 0, 0, [14, [[1, 5.0]], 1]]),  # float remaining ms
    _pk([1, 0, 0, 0, [14, [[1, 5]]]]),  # checkpoint without its term
    _pk([1, 0, 0, 0, [3, [[b"k", 9, 0, 1, b""]], [], []]]),  # bad compare target
    _pk([1, 0, 0, 0, [3, [[b"k", 0, 0, None, b""]], [], []]]),  # bad operand
    _pk([1, 0, 0, 0, [3, [], [[4, 5]], []]]),  # Compact inside a txn
    _pk([1, 0, 0, 0, [8, [[1, 2, 3]]]]),  # bad checkpoint pair
    _pk([True, 0, 0, 0, [10]]),  # bool tag
    _pk([1, 0, 0, 0, [10]])[:-1],
    b"\x91" * 100_000 + b"\xc0",  # absurd nesting
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_request(data)


def test_deep_txn_nesting_rejected_by_decoder() -> None:
    obj: list[object] = [3, [], [], []]
    for _ in range(40):
        obj = [3, [], [obj], []]
    with pytest.raises(InvalidArgument, match="nested"):
        decode_request(_pk([1, 0, 0, 0, obj]))


def test_non_bytes_input_rejected() -> None:
    with pytest.raises(InvalidArgument):
        decode_request("not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_request(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_requests_only_raise_invalid_argument(data: st.DataObject) -> None:
    raw = bytearray(encode_request(Request(COMMANDS[4], 1, 2, 3)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidArgument):
        decode_request(bytes(raw))


# --- failures ----------------------------------------------------------------------------------


def test_failure_to_error() -> None:
    e = failure_to_error(Failure(5, "Compacted", "gone", 4))
    assert isinstance(e, Compacted) and e.compact_revision == 4 and str(e) == "gone"
    assert isinstance(failure_to_error(Failure(1, "LeaseNotFound", "x")), LeaseNotFound)
    assert isinstance(failure_to_error(Failure(1, "AlreadyExists", "x")), AlreadyExists)
    assert isinstance(failure_to_error(Failure(1, "InvalidArgument", "x")), InvalidArgument)
    assert isinstance(failure_to_error(Failure(1, "FailedPrecondition", "x")), FailedPrecondition)
    unknown = failure_to_error(Failure(1, "Martian", "x"))
    assert type(unknown) is RegistryError


# --- snapshot / restore / hash -----------------------------------------------------------------


def _busy_store() -> Store:
    s = Store()
    run(s, LeaseGrant(1, 10))
    run(s, LeaseGrant(2, 20))
    put(s, b"a", b"1", lease=1)
    put(s, b"b", b"1")
    s.apply(Request(Put(b"a", b"2", lease=2, prev_kv=True), now_ms=5, client_id=3, seq=1))
    s.apply(Request(Txn((), (Range(b"", b"\0"), Put(b"c"))), now_ms=6, client_id=3, seq=2))
    s.apply(Request(Put(b"z", lease=77), now_ms=7, client_id=4, seq=1))
    run(s, DeleteRange(b"b"))
    put(s, b"b", b"again")
    run(s, Compact(4))
    put(s, b"d", lease=1)
    return s


def test_snapshot_restore_round_trip() -> None:
    s = _busy_store()
    snap = s.snapshot()
    t = Store()
    t.restore(snap)
    assert t.snapshot() == snap
    assert t.hash() == s.hash()
    assert t.revision == s.revision and t.compact_revision == s.compact_revision == 4
    assert t.leases() == s.leases()
    assert t.key_count() == s.key_count()
    for rev in range(4, s.revision + 1):
        q = Range(b"", b"\0", revision=rev)
        assert t.range(q) == s.range(q)
    assert t.events_since(4, b"", b"\0") == s.events_since(4, b"", b"\0")
    # request identity survives
    dup = Request(Put(b"a", b"2", lease=2, prev_kv=True), now_ms=5, client_id=3, seq=1)
    assert t.apply(dup) == s.apply(dup)
    assert t.apply(dup)[1] == []
    # and both continue identically
    for store in (s, t):
        put(store, b"e", lease=2)
        run(store, LeaseRevoke(1))
    assert t.snapshot() == s.snapshot()
    assert t.hash() == s.hash()


def test_restore_replaces_everything() -> None:
    s = _busy_store()
    empty = Store().snapshot()
    s.restore(empty)
    assert s.snapshot() == empty
    assert (s.revision, s.compact_revision, s.key_count(), s.leases()) == (1, 0, 0, [])


def test_hash_tracks_state() -> None:
    a, b = Store(), Store()
    assert a.hash() == b.hash()
    put(a, b"k", b"1")
    assert a.hash() != b.hash()
    put(b, b"k", b"1")
    assert a.hash() == b.hash()
    run(a, LeaseGrant(1, 5))
    assert a.hash() != b.hash()
    run(b, LeaseGrant(1, 5))
    assert a.hash() == b.hash()
    put(a, b"k", b"2")
    put(b, b"k", b"3")
    assert a.hash() != b.hash()
    assert 0 <= a.hash() < 2**64


def test_restore_rejects_corrupt_and_keeps_state() -> None:
    s = _busy_store()
    snap = s.snapshot()
    bad: list[bytes] = [
        b"",
        b"\x00garbage",
        encode_request(Request(Compact(1))),  # a log entry, not a snapshot
        _pk(["raftreg.store", 2, [], [], []]),
        _pk(["other", 1, [1, 0, [], []], [], []]),
        _pk(["raftreg.store", 1, [0, 0, [], []], [], []]),  # revision 0
        _pk(["raftreg.store", 1, [3, 0, [[b"k", [[2, 2, 1, b"v", 9]]]], [[2, [b"k"]]]], [], []]),
        _pk(["raftreg.store", 1, [3, 0, [[b"k", [[2, 2, 1, b"v", 0]]]], []], [], []]),  # no log
        _pk(["raftreg.store", 1, [3, 0, [[b"k", [[2, 2, 1, b"v", 0]]]], [[3, [b"k"]]]], [], []]),
        snap[:-3],
    ]
    for data in bad:
        with pytest.raises(InvalidArgument):
            s.restore(data)
        assert s.snapshot() == snap


def test_minimal_hand_built_snapshot_accepted() -> None:
    keyspace = [2, 0, [[b"k", [[2, 2, 1, b"v", 0]]]], [[2, [b"k"]]]]
    data = _pk(["raftreg.store", 3, keyspace, [], [], 0, [[4, "n4", "h:1", "h:2", False]]])
    s = Store()
    s.restore(data)
    assert s.snapshot() == data
    assert s.key_count() == 1
    assert s.members() == [MemberUpdate(4, "n4", "h:1", "h:2")]


def test_format_2_snapshots_are_restored_without_members() -> None:
    keyspace = [2, 0, [[b"k", [[2, 2, 1, b"v", 0]]]], [[2, [b"k"]]]]
    s = Store()
    s.restore(_pk(["raftreg.store", 2, keyspace, [], [], 0]))
    assert s.key_count() == 1 and s.members() == []
    assert s.snapshot() == _pk(["raftreg.store", 3, keyspace, [], [], 0, []])


def test_results_round_trip() -> None:
    s = _busy_store()
    results = [
        run(s, Txn((), (Range(b"", b"\0"), Put(b"n", prev_kv=True), DeleteRange(b"a")))),
        run(s, Compact(1)),
        run(s, LeaseGrant(9, 9)),
        run(s, Put(b"a", prev_kv=True)),
        run(s, DeleteRange(b"", b"\0", prev_kv=True)),
        run(s, LeaderEpoch(1)),
    ]
    for r in results:
        assert result_from_obj(result_to_obj(r)) == r


def test_member_updates_change_no_revision_but_the_hash_and_snapshot() -> None:
    s = _busy_store()
    rev, h = s.revision, s.hash()
    r = run(s, MemberUpdate(7, "n4", "h:1", "h:2"))
    assert r == Done(rev) and s.revision == rev and s.hash() != h
    run(s, MemberUpdate(7, "n4", "h:1", "h:2", removed=True))
    assert s.members() == [MemberUpdate(7, "n4", "h:1", "h:2", removed=True)]
    t = Store()
    t.restore(s.snapshot())
    assert t.members() == s.members() and t.hash() == s.hash()
    t.forget_members()
    assert t.members() == []
    assert isinstance(run(s, MemberUpdate(0, "x", "h:1", "h:2")), Failure)
