"""Per-method authorization rules: which permission each gRPC method needs on which key range.

Under etcd's service names (`/etcdserverpb.KV/Put`, ...) every rule below applies as to the
raftreg.v1 method of the same name (`native_method`). grpc.health.v1 needs no credential, nor do
Auth.Authenticate and Auth.AuthStatus (`_EXEMPT_PREFIX`, `_EXEMPT`).

Authorization, per request, before the servicer sees it (PERMISSION_DENIED, nothing changed).
A user's permissions are the union of its roles'. Write permission does not imply read.
- A key range is permitted when ONE permitted prefix covers it entirely (`covers`).
- KV.Range: read on [key, range_end). KV.Put: write on the key, plus read with prev_kv.
  KV.DeleteRange: write on the range, plus read with prev_kv. KV.Txn: read on every compare's
  range, and every operation of BOTH branches as if alone (nested txns too).
- KV.Batch: each operation as its unary call. A refused operation is answered on the stream
  with its own PERMISSION_DENIED `OpError` and never reaches the store; the stream and the
  other operations carry on (the client multiplexes unrelated callers on one Batch stream,
  so refusing the whole stream would fail calls that are allowed).
- Watch.Watch: each create needs read on its range. A refused create is answered as etcd
  does: `created` + `canceled` with the denial as `cancel_reason`; the stream carries on. To
  keep the creates' first-in first-out answers, a refusal waits until every earlier create on
  the stream was answered.
- Leases (grant, revoke, keepalive, time-to-live, list): any user with some write permission
  (leases exist to keep written keys alive). LeaseRevoke also needs write on every key
  attached to the lease (revoking deletes them), LeaseTimeToLive with `keys` read on every
  attached key; attached keys are looked up on the receiving node's replica at request time.
- Maintenance.Status, Cluster.MemberList: any authenticated user.
- KV.Compact, Maintenance.Snapshot, Cluster.MemberAdd/MemberRemove, and every method not
  named above (so a method added later is root-only until classified): root only.

The request checks are here; `raftreg.api.auth.interceptor` maps each method to its check, looks
up a lease's attached keys, and answers refusals (including the stream cases above).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftreg.api.auth.policy import Principal
from raftreg.errors import RegistryError
from raftreg.pb import raftreg_pb2 as pb

_EXEMPT_PREFIX = "/grpc.health.v1.Health/"
# Callable before authenticating, under either name (the credential check IS Authenticate).
_EXEMPT = frozenset({"/raftreg.v1.Auth/Authenticate", "/raftreg.v1.Auth/AuthStatus"})
_ETCD_TO_NATIVE = ("/etcdserverpb.", "/raftreg.v1.")


def native_method(method: str) -> str:
    """The raftreg.v1 name of a method called under etcd's service names (same rules)."""
    etcd, native = _ETCD_TO_NATIVE
    return native + method[len(etcd):] if method.startswith(etcd) else method


# The raftreg.v1 methods the rules name.
RANGE = "/raftreg.v1.KV/Range"
PUT = "/raftreg.v1.KV/Put"
DELETE_RANGE = "/raftreg.v1.KV/DeleteRange"
TXN = "/raftreg.v1.KV/Txn"
BATCH = "/raftreg.v1.KV/Batch"
WATCH = "/raftreg.v1.Watch/Watch"
LEASE_GRANT = "/raftreg.v1.Lease/LeaseGrant"
LEASE_REVOKE = "/raftreg.v1.Lease/LeaseRevoke"
LEASE_KEEPALIVE = "/raftreg.v1.Lease/LeaseKeepAlive"
LEASE_TTL = "/raftreg.v1.Lease/LeaseTimeToLive"
LEASE_LEASES = "/raftreg.v1.Lease/LeaseLeases"
MEMBER_LIST = "/raftreg.v1.Cluster/MemberList"
STATUS = "/raftreg.v1.Maintenance/Status"

Check = Callable[["Principal", Any], None]


def check_range(p: Principal, r: pb.RangeRequest) -> None:
    p.need_read(r.key, r.range_end)


def check_put(p: Principal, r: pb.PutRequest) -> None:
    p.need_write(r.key)
    if r.prev_kv:
        p.need_read(r.key)


def check_delete(p: Principal, r: pb.DeleteRangeRequest) -> None:
    p.need_write(r.key, r.range_end)
    if r.prev_kv:
        p.need_read(r.key, r.range_end)


def check_txn(p: Principal, r: pb.TxnRequest) -> None:
    for c in r.compare:
        p.need_read(c.key, c.range_end)
    for op in (*r.success, *r.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            check_range(p, op.request_range)
        elif which == "request_put":
            check_put(p, op.request_put)
        elif which == "request_delete_range":
            check_delete(p, op.request_delete_range)
        elif which == "request_txn":
            check_txn(p, op.request_txn)


def check_tagged(p: Principal, op: pb.TaggedRequest) -> None:
    """A Batch operation, as its unary call (an empty one is left to the servicer)."""
    which = op.WhichOneof("request")
    if which == "range":
        check_range(p, op.range)
    elif which == "put":
        check_put(p, op.put)
    elif which == "delete_range":
        check_delete(p, op.delete_range)
    elif which == "txn":
        check_txn(p, op.txn)


def _anyone(p: Principal, r: Any) -> None:
    return None


def _writer(p: Principal, r: Any) -> None:
    p.need_writer()


def _root(what: str) -> Check:
    def check(p: Principal, r: Any) -> None:
        p.need_root(what)

    return check


def _verdict(check: Check, p: Principal, request: Any) -> RegistryError | None:
    try:
        check(p, request)
    except RegistryError as e:
        return e
    return None
