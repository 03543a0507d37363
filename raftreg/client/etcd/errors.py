"""The ONE place where etcd's errors become `raftreg.errors` exceptions.

etcd answers a failed call with a gRPC status code and a fixed message ("etcdserver: ...", see
etcd's api/v3rpc/rpctypes). The message decides when it is known (several etcd errors share a
status code but mean different things to a caller: OUT_OF_RANGE is a compacted revision, a
future revision or a too large lease TTL); otherwise the status code does.

`etcd_error(code, details)` gives the exception. Refusals etcd makes before proposing a request
become `NotApplied`: the only failure after which the adapter may retry a non-idempotent write
(etcd has no request identities, so a retry after an ambiguous failure could apply a write
twice). Every other UNAVAILABLE is a plain `Unavailable`, which says nothing about the outcome.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
import grpc.aio

from raftreg import errors as E

# etcd's messages (etcd 3.5 api/v3rpc/rpctypes/error.go), most specific first.
_BY_MESSAGE: tuple[tuple[str, type[E.RegistryError]], ...] = (
    ("etcdserver: mvcc: required revision has been compacted", E.Compacted),
    ("etcdserver: mvcc: required revision is a future revision", E.FutureRevision),
    ("etcdserver: mvcc: database space exceeded", E.ResourceExhausted),
    ("etcdserver: requested lease not found", E.LeaseNotFound),
    ("etcdserver: lease already exists", E.AlreadyExists),
    ("etcdserver: too large lease TTL", E.InvalidArgument),
    ("etcdserver: key is not provided", E.InvalidArgument),
    ("etcdserver: key not found", E.InvalidArgument),
    ("etcdserver: value is provided", E.InvalidArgument),
    ("etcdserver: lease is provided", E.InvalidArgument),
    ("etcdserver: too many operations in txn request", E.InvalidArgument),
    ("etcdserver: duplicate key given in txn request", E.InvalidArgument),
    ("etcdserver: request is too large", E.InvalidArgument),
    ("etcdserver: too many requests", E.ResourceExhausted),
    ("etcdserver: member not found", E.NotFound),
    ("etcdserver: permission denied", E.PermissionDenied),
    ("etcdserver: invalid auth token", E.Unauthenticated),
    ("etcdserver: user name is empty", E.Unauthenticated),
    ("etcdserver: authentication failed", E.Unauthenticated),
    ("etcdserver: watch canceled", E.Cancelled),
    # refused before proposing: not applied
    ("etcdserver: no leader", E.NotApplied),
    ("etcdserver: not capable", E.NotApplied),
    ("etcdserver: rpc not supported for learner", E.NotApplied),
    ("etcdserver: not leader", E.Unavailable),
    ("etcdserver: leader changed", E.Unavailable),
    ("etcdserver: server stopped", E.Unavailable),
    ("etcdserver: request timed out", E.Unavailable),  # also "..., possibly due to ..."
    ("etcdserver: unhealthy cluster", E.Unavailable),
    # The server's own context errors (sent with code UNKNOWN when the caller's deadline
    # passed or it cancelled while etcd was working on the request).
    ("context deadline exceeded", E.DeadlineExceeded),
    ("context canceled", E.Cancelled),
)

_BY_CODE: dict[grpc.StatusCode, type[E.RegistryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: E.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: E.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: E.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: E.FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: E.InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: E.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: E.DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: E.ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: E.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: E.Unauthenticated,
    grpc.StatusCode.CANCELLED: E.Cancelled,
    grpc.StatusCode.ABORTED: E.Unavailable,
    grpc.StatusCode.DATA_LOSS: E.RegistryError,
}


def etcd_error(code: grpc.StatusCode, details: str) -> E.RegistryError:
    """The raftreg exception for an etcd status (code, details). `Compacted` carries
    `compact_revision = 0`: etcd's error does not say where the compaction point is."""
    message = details or code.name
    cls: type[E.RegistryError] | None = None
    for prefix, c in _BY_MESSAGE:
        if details.startswith(prefix):
            cls = c
            break
    if cls is None:
        cls = _BY_CODE.get(code, E.RegistryError)
    if cls is E.Compacted:
        return E.Compacted(message, 0)
    return cls(message)


def rpc_error(e: grpc.aio.AioRpcError | grpc.RpcError) -> E.RegistryError:
    """`etcd_error` for a failed grpc call (aio or blocking)."""
    call = cast(Any, e)
    return etcd_error(call.code(), call.details() or "")
