"""The etcd backend without a cluster: error mapping, backend selection, our own proto."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from raftreg import errors as E
from raftreg.client import GrpcRegistryClient, connect
from raftreg.client.backend_choice import select_backend
from raftreg.client.etcd import EtcdRegistryClient, etcd_error, split_etcd_endpoints
from raftreg.client.etcd.pb import etcdv3_pb2 as pb

U = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        (U.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", E.Compacted),
        (U.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision",
         E.FutureRevision),
        (U.OUT_OF_RANGE, "etcdserver: too large lease TTL", E.InvalidArgument),
        (U.NOT_FOUND, "etcdserver: requested lease not found", E.LeaseNotFound),
        (U.FAILED_PRECONDITION, "etcdserver: lease already exists", E.AlreadyExists),
        (U.INVALID_ARGUMENT, "etcdserver: key is not provided", E.InvalidArgument),
        (U.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request", E.InvalidArgument),
        (U.UNAVAILABLE, "etcdserver: leader changed", E.Unavailable),
        (U.UNAVAILABLE, "etcdserver: no leader", E.NotApplied),
        (U.UNAVAILABLE, "etcdserver: request timed out", E.Unavailable),
        (U.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure",
         E.Unavailable),
        (U.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", E.ResourceExhausted),
        (U.RESOURCE_EXHAUSTED, "etcdserver: too many requests", E.ResourceExhausted),
        (U.PERMISSION_DENIED, "etcdserver: permission denied", E.PermissionDenied),
        (U.UNAUTHENTICATED, "etcdserver: invalid auth token", E.Unauthenticated),
        (U.DEADLINE_EXCEEDED, "Deadline Exceeded", E.DeadlineExceeded),
        (U.UNAVAILABLE, "failed to connect to all addresses", E.Unavailable),
        (U.CANCELLED, "", E.Cancelled),
        (U.UNKNOWN, "context deadline exceeded", E.DeadlineExceeded),
        (U.INTERNAL, "boom", E.RegistryError),
    ],
)
def test_etcd_errors_map_into_the_raftreg_tree(
    code: grpc.StatusCode, details: str, cls: type[E.RegistryError]
) -> None:
    err = etcd_error(code, details)
    assert type(err) is cls
    assert str(err) == (details or code.name)


def test_only_refusals_before_proposing_count_as_not_applied() -> None:
    def not_applied(code: grpc.StatusCode, details: str) -> bool:
        return isinstance(etcd_error(code, details), E.NotApplied)

    assert not_applied(U.UNAVAILABLE, "etcdserver: no leader")
    assert not_applied(U.UNAVAILABLE, "etcdserver: not capable")
    assert not_applied(U.UNAVAILABLE, "etcdserver: rpc not supported for learner")
    assert not not_applied(U.UNAVAILABLE, "etcdserver: leader changed")
    assert not not_applied(U.UNAVAILABLE, "etcdserver: request timed out")
    assert not not_applied(U.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert not not_applied(U.UNAVAILABLE, "Socket closed")
    assert not not_applied(U.RESOURCE_EXHAUSTED, "etcdserver: too many requests")


def test_etcd_endpoint_urls() -> None:
    assert split_etcd_endpoints("etcd://a:1,b:2") == ("a:1", "b:2")
    assert split_etcd_endpoints(["etcd://a:1", "http://b:2", "c:3"]) == ("a:1", "b:2", "c:3")
    with pytest.raises(E.InvalidArgument):
        split_etcd_endpoints("etcd://nonsense")


def test_the_scheme_selects_the_backend(tmp_path: Path) -> None:
    cfg = tmp_path / "none.toml"
    assert select_backend("etcd://a:1,b:2", config_path=cfg, env={}).backend == "etcd"
    assert select_backend("etcd://a:1,b:2", config_path=cfg, env={}).endpoints == ("a:1", "b:2")
    sel = select_backend("raftreg://a:1", config_path=cfg, env={"RAFTREG_BACKEND": "etcd"})
    assert sel.backend == "raftreg"
    assert select_backend(["a:1"], config_path=cfg, env={}).backend == "raftreg"
    with pytest.raises(E.InvalidArgument):
        select_backend("etcd://a:1,raftreg://b:2", config_path=cfg, env={})


def test_the_environment_selects_the_backend(tmp_path: Path) -> None:
    cfg = tmp_path / "none.toml"
    sel = select_backend(["a:1"], config_path=cfg, env={"RAFTREG_BACKEND": "etcd"})
    assert (sel.backend, sel.endpoints) == ("etcd", ("a:1",))
    sel = select_backend(None, config_path=cfg, env={"RAFTREG_ENDPOINTS": "etcd://x:9"})
    assert (sel.backend, sel.endpoints) == ("etcd", ("x:9",))
    sel = select_backend(None, config_path=cfg, env={"RAFTREG_BACKEND": "etcd"})
    assert (sel.backend, sel.endpoints) == ("etcd", ("127.0.0.1:2379",))
    with pytest.raises(E.InvalidArgument):
        select_backend(None, config_path=cfg, env={"RAFTREG_BACKEND": "zookeeper"})


def test_the_registry_table_selects_the_backend(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        '[cluster]\nname = "x"\n\n[[node]]\nname = "n1"\nraft = "127.0.0.1:7001"\n'
        'client = "127.0.0.1:7002"\n\n[registry]\nbackend = "etcd"\n'
        'endpoints = ["127.0.0.1:2379", "http://127.0.0.1:22379"]\n'
    )
    sel = select_backend(None, config_path=cfg, env={})
    assert (sel.backend, sel.endpoints) == ("etcd", ("127.0.0.1:2379", "127.0.0.1:22379"))
    # the environment beats the file; explicit endpoints beat both
    assert select_backend(None, config_path=cfg, env={"RAFTREG_BACKEND": "raftreg"}) == (
        type(sel)("raftreg", ("127.0.0.1:2379", "127.0.0.1:22379")))
    assert select_backend(["h:1"], config_path=cfg, env={}).endpoints == ("h:1",)
    cfg.write_text('[registry]\nendpoints = "etcd://e:1,e:2"\n')
    assert select_backend(None, config_path=cfg, env={}) == type(sel)("etcd", ("e:1", "e:2"))
    cfg.write_text('[registry]\nbackend = "etcd"\nport = 1\n')
    with pytest.raises(E.InvalidArgument):
        select_backend(None, config_path=cfg, env={})


def test_without_a_registry_table_raftreg_uses_the_node_addresses(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('[cluster]\nname = "x"\n\n[[node]]\nname = "n1"\nraft = "127.0.0.1:7001"\n'
                   'client = "127.0.0.1:7002"\n')
    assert select_backend(None, config_path=cfg, env={}) == select_backend(
        "raftreg://127.0.0.1:7002", config_path=cfg, env={})


def test_connect_builds_the_selected_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAFTREG_BACKEND", raising=False)
    monkeypatch.delenv("RAFTREG_ENDPOINTS", raising=False)
    cfg = tmp_path / "none.toml"
    assert isinstance(connect("etcd://127.0.0.1:1", config_path=cfg), EtcdRegistryClient)
    assert isinstance(connect(["127.0.0.1:1"], config_path=cfg), GrpcRegistryClient)
    monkeypatch.setenv("RAFTREG_BACKEND", "etcd")
    c = connect(["127.0.0.1:1"], config_path=cfg)
    assert isinstance(c, EtcdRegistryClient) and c.endpoints == ("127.0.0.1:1",)


def test_our_etcd_messages_live_in_their_own_proto_package() -> None:
    d = pb.DESCRIPTOR
    assert d.package == "raftreg.etcdv3"
    assert d.name == "raftreg/client/etcd/pb/etcdv3.proto"
    assert pb.RangeRequest.DESCRIPTOR.full_name == "raftreg.etcdv3.RangeRequest"
    # etcd's published field numbers (spot checks; the contract suite checks the rest live)
    f = {x.name: x.number for x in pb.Compare.DESCRIPTOR.fields}
    assert (f["result"], f["target"], f["key"], f["value"], f["range_end"]) == (1, 2, 3, 7, 64)
    assert pb.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    assert pb.RangeRequest.DESCRIPTOR.fields_by_name["max_create_revision"].number == 13
    assert pb.StatusResponse.DESCRIPTOR.fields_by_name["isLearner"].number == 10


def test_the_adapter_satisfies_the_registry_client_protocol() -> None:
    from raftreg.client import RegistryClient

    assert isinstance(EtcdRegistryClient("etcd://127.0.0.1:1"), RegistryClient)


def test_one_request_writer_writes_both_protocols_byte_for_byte() -> None:
    """`raftreg.common.convert` writes requests once for both generated modules and reads
    etcd's responses with raftreg's readers: that holds while the shapes agree field for field."""
    from raftreg.client.etcd.client import ETCD
    from raftreg.common import convert
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
    from raftreg.pb import raftreg_pb2

    txn = Txn(
        compare=(Compare(b"k", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"v", b"l"),
                 Compare(b"m", CompareTarget.MOD, CompareResult.LESS, 7)),
        success=(Range(b"a", b"\0", 3, 2, SortOrder.DESCEND, SortTarget.MOD, True, False, 1),
                 Put(b"k", b"\xff", 5, True, False, True)),
        failure=(DeleteRange(b"d", b"e", True), Txn(success=(Put(b"x", b"y"),))),
    )
    assert ETCD.txn(txn).SerializeToString() == convert.RAFTREG.txn(txn).SerializeToString()
    assert isinstance(ETCD.txn(txn), pb.TxnRequest)

    kv = dict(key=b"k", create_revision=2, mod_revision=4, version=3, value=b"v", lease=9)
    resp = pb.TxnResponse(header=pb.ResponseHeader(revision=4), succeeded=True, responses=[
        pb.ResponseOp(response_range=pb.RangeResponse(kvs=[pb.KeyValue(**kv)], count=1)),
        pb.ResponseOp(response_put=pb.PutResponse(prev_kv=pb.KeyValue(**kv))),
    ])
    ours = raftreg_pb2.TxnResponse.FromString(resp.SerializeToString())
    got = convert.txn_result_from_pb(resp)
    assert got == convert.txn_result_from_pb(ours)
    assert got.revision == 4 and got.responses[0].revision == 4  # nested headers: the txn's
    ev = pb.Event(type=pb.Event.DELETE, kv=pb.KeyValue(**kv), prev_kv=pb.KeyValue(**kv))
    assert convert.event_from_pb(ev).prev_kv == convert.kv_from_pb(pb.KeyValue(**kv))
