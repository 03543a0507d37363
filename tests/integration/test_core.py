"""Registry core on a real three-process cluster: KV semantics across nodes, validation,
minority behaviour and the raft port's secret."""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import time
import tomllib
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pysyncobj.encryptor import getEncryptor

from raftreg.pb import raftreg_pb2 as pb
from raftreg.testing import ProcessCluster
from tests.integration.wire import Wire, wire

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wires(shared_cluster: ProcessCluster) -> Iterator[dict[str, Wire]]:
    ws = {n: wire(shared_cluster.client[n]) for n in shared_cluster.names}
    yield ws
    for w in ws.values():
        w.close()


def _roles(c: ProcessCluster) -> tuple[str, list[str]]:
    leader = c.wait_leader()
    return leader, [n for n in c.names if n != leader]


def test_put_through_follower_linearizable_get_through_another(
    shared_cluster: ProcessCluster, wires: dict[str, Wire]
) -> None:
    leader, followers = _roles(shared_cluster)
    f1, f2 = followers
    r1 = wires[f1].kv.Put(pb.PutRequest(key=b"core/a", value=b"1"), timeout=10)
    got = wires[f2].kv.Range(pb.RangeRequest(key=b"core/a"), timeout=10)
    assert [kv.value for kv in got.kvs] == [b"1"]
    kv = got.kvs[0]
    assert kv.create_revision == kv.mod_revision == r1.header.revision
    assert kv.version == 1
    assert got.header.revision >= r1.header.revision

    r2 = wires[leader].kv.Put(pb.PutRequest(key=b"core/a", value=b"2", prev_kv=True), timeout=10)
    assert r2.header.revision == r1.header.revision + 1 or r2.header.revision > r1.header.revision
    assert r2.prev_kv.value == b"1"
    kv2 = wires[f1].kv.Range(pb.RangeRequest(key=b"core/a"), timeout=10).kvs[0]
    assert (kv2.create_revision, kv2.mod_revision, kv2.version) == (
        r1.header.revision,
        r2.header.revision,
        2,
    )
    # The old value is still readable at its revision.
    old = wires[f2].kv.Range(pb.RangeRequest(key=b"core/a", revision=r1.header.revision))
    assert old.kvs[0].value == b"1"

    d = wires[f2].kv.DeleteRange(pb.DeleteRangeRequest(key=b"core/a", prev_kv=True), timeout=10)
    assert d.deleted == 1 and d.prev_kvs[0].value == b"2"
    assert wires[leader].kv.Range(pb.RangeRequest(key=b"core/a"), timeout=10).count == 0
    r3 = wires[f1].kv.Put(pb.PutRequest(key=b"core/a", value=b"3"), timeout=10)
    kv3 = wires[f2].kv.Range(pb.RangeRequest(key=b"core/a"), timeout=10).kvs[0]
    assert (kv3.create_revision, kv3.version) == (r3.header.revision, 1)


def test_txn_is_atomic_and_compares(
    shared_cluster: ProcessCluster, wires: dict[str, Wire]
) -> None:
    _, (f1, f2) = _roles(shared_cluster)
    w = wires[f1]
    w.kv.Put(pb.PutRequest(key=b"txn/x", value=b"old"), timeout=10)
    txn = pb.TxnRequest(
        compare=[pb.Compare(key=b"txn/x", target=pb.Compare.VALUE, result=pb.Compare.EQUAL,
                            value=b"old")],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"txn/x", value=b"new")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"txn/y", value=b"new")),
        ],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/x"))],
    )
    ok = w.kv.Txn(txn, timeout=10)
    assert ok.succeeded
    got = wires[f2].kv.Range(
        pb.RangeRequest(key=b"txn/", range_end=b"txn0"), timeout=10
    )
    assert {(kv.key, kv.value, kv.mod_revision) for kv in got.kvs} == {
        (b"txn/x", b"new", ok.header.revision),
        (b"txn/y", b"new", ok.header.revision),
    }
    again = w.kv.Txn(txn, timeout=10)
    assert not again.succeeded
    assert again.responses[0].response_range.kvs[0].value == b"new"
    assert again.header.revision == ok.header.revision  # a failed compare writes nothing

    # A branch that cannot apply as a whole applies not at all.
    bad = pb.TxnRequest(
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"txn/z", value=b"1")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"txn/w", value=b"1", lease=424242)),
        ]
    )
    with pytest.raises(grpc.RpcError) as e:
        w.kv.Txn(bad, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert wires[f2].kv.Range(pb.RangeRequest(key=b"txn/z"), timeout=10).count == 0


BAD_REQUESTS = [
    ("empty key", "Put", pb.PutRequest(key=b"", value=b"x"), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "range_end before key",
        "Range",
        pb.RangeRequest(key=b"b", range_end=b"a"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "unknown compare target",
        "Txn",
        pb.TxnRequest(compare=[pb.Compare(key=b"k", target=17, version=1)]),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "revision in the future",
        "Range",
        pb.RangeRequest(key=b"k", revision=10**12),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    (
        "oversized value",
        "Put",
        pb.PutRequest(key=b"big", value=b"x" * (1_572_864 + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "unknown lease",
        "Put",
        pb.PutRequest(key=b"k", value=b"x", lease=987654321),
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "compact in the future",
        "Compact",
        pb.CompactionRequest(revision=10**12),
        grpc.StatusCode.OUT_OF_RANGE,
    ),
]


@pytest.mark.parametrize(("what", "method", "request_", "code"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_refused_and_change_nothing(
    shared_cluster: ProcessCluster,
    wires: dict[str, Wire],
    what: str,
    method: str,
    request_: object,
    code: grpc.StatusCode,
) -> None:
    w = wires[shared_cluster.names[0]]
    before = w.revision()
    with pytest.raises(grpc.RpcError) as e:
        getattr(w.kv, method)(request_, timeout=10)
    assert e.value.code() == code, e.value.details()
    assert e.value.details(), "the refusal must say why"
    assert w.revision() == before


def test_member_list_and_status(shared_cluster: ProcessCluster, wires: dict[str, Wire]) -> None:
    w = wires[shared_cluster.names[1]]
    # The leader, the member list and every node's status come from separate calls: an
    # election between two of them is no disagreement, so the whole snapshot is retaken until
    # they agree (bounded: a lasting disagreement still fails).
    deadline = time.monotonic() + 10
    while True:
        leader, _ = _roles(shared_cluster)
        members = w.cluster.MemberList(pb.MemberListRequest(), timeout=5).members
        sts = [wires[n].maint.Status(pb.StatusRequest(), timeout=5) for n in shared_cluster.names]
        agree = ([m.name for m in members if m.isLeader] == [leader]
                 and len({s.leader for s in sts}) == 1)
        if agree or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(m.name for m in members) == sorted(shared_cluster.names)
    assert [m.name for m in members if m.isLeader] == [leader]
    assert len({s.leader for s in sts}) == 1
    assert len({s.header.cluster_id for s in sts}) == 1
    assert len({s.header.member_id for s in sts}) == 3


def test_status_hashes_the_state_only_when_asked(
    shared_cluster: ProcessCluster, wires: dict[str, Wire]
) -> None:
    """Status is what leader discovery and monitoring call: it never reads every key unless
    `with_hash` asks for the hash, which is then the full-state hash that Hash reports."""
    w = wires[shared_cluster.names[0]]
    assert w.maint.Status(pb.StatusRequest(), timeout=5).hash == 0
    deadline = time.monotonic() + 10
    while True:  # no write may land between the two calls
        with_hash = w.maint.Status(pb.StatusRequest(with_hash=True), timeout=5).hash
        h32 = w.maint.Hash(pb.HashRequest(), timeout=5).hash
        if with_hash & 0xFFFFFFFF == h32 or time.monotonic() > deadline:
            break
    assert with_hash != 0 and with_hash & 0xFFFFFFFF == h32


def test_health_service(shared_cluster: ProcessCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(shared_cluster.client["n1"]) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + 10
        while True:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_raft_port_never_unpickles_what_a_peer_sends(
    shared_cluster: ProcessCluster, tmp_path: Path
) -> None:
    """The raft port speaks raftreg's peer protocol (msgpack after a mutual proof of the
    secret), not PySyncObj's pickle: a pickle is never unpickled, neither framed PySyncObj's way
    without the secret, nor sealed with the right secret PySyncObj's way (its Fernet key
    derivation), nor framed ours. tests/integration/test_peer_port.py has the full list."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))  # unpickling would create the marker file

    payload = zlib.compress(pickle.dumps(Evil()), 3)
    secret = tomllib.loads(shared_cluster.config_path.read_text())["cluster"]["secret"]
    sealed = getEncryptor(secret).encrypt(payload)
    host, port = shared_cluster.raft["n1"].split(":")
    for frame in (struct.pack("i", len(payload)) + payload,
                  struct.pack("i", len(sealed)) + sealed,
                  struct.pack(">I", len(payload)) + payload):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(frame)
            s.settimeout(10)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                assert s.recv(1) == b""  # the node hangs up without a word
    assert not marker.exists()
    # The node is unharmed.
    w = wire(shared_cluster.client["n1"])
    try:
        w.kv.Put(pb.PutRequest(key=b"after-evil", value=b"ok"), timeout=10)
    finally:
        w.close()


def test_minority_node_refuses_linearizable_reads_but_serves_serializable(
    cluster: ProcessCluster,
) -> None:
    w = wire(cluster.client["n1"])
    try:
        w.kv.Put(pb.PutRequest(key=b"m/k", value=b"v"), timeout=10)
        deadline = time.monotonic() + 10
        while w.kv.Range(pb.RangeRequest(key=b"m/k", serializable=True)).count != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cluster.kill("n2")
        cluster.kill("n3")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            w.kv.Range(pb.RangeRequest(key=b"m/k"), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert time.monotonic() - t0 < 15
        got = w.kv.Range(pb.RangeRequest(key=b"m/k", serializable=True), timeout=10)
        assert [kv.value for kv in got.kvs] == [b"v"]
        with pytest.raises(grpc.RpcError) as e2:
            w.kv.Put(pb.PutRequest(key=b"m/k2", value=b"v"), timeout=30)
        assert e2.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        w.close()
