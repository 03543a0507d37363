"""The one table between raftreg's exceptions and gRPC status codes.

The server answers every `RegistryError` with the status code below, the message as details,
and the exception's class name in the trailing metadata key `raftreg-error` (plus
`raftreg-compact-revision` for `Compacted`). The client reverses it with `error_from_status`,
so both ends agree on one table.

Under etcd's service names (`etcdserverpb.*`) the same errors are answered as etcd answers
them (`etcd_status_for`): etcd's code and its "etcdserver: ..." message, which etcd clients
match verbatim (clientv3's rpctypes); the raftreg metadata rides along.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from raftreg import errors as E

ERROR_KEY = "raftreg-error"
COMPACT_KEY = "raftreg-compact-revision"
# Trailing metadata of a call that succeeded but did less than its name says (etcd's
# Defragment on raftreg).
NOTE_KEY = "raftreg-note"
# Trailing metadata of a call refused before its handler ran: safe to retry even when not
# idempotent (the "not executed" rule, raftreg.resilience.rpc).
NOT_EXECUTED_KEY = "raftreg-not-executed"
NOT_EXECUTED_METADATA: tuple[tuple[str, str], ...] = ((NOT_EXECUTED_KEY, "1"),)

# Ordered most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[E.RegistryError], grpc.StatusCode], ...] = (
    (E.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (E.LeaseNotFound, grpc.StatusCode.NOT_FOUND),
    (E.NotFound, grpc.StatusCode.NOT_FOUND),
    (E.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (E.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (E.Compacted, grpc.StatusCode.OUT_OF_RANGE),
    (E.FutureRevision, grpc.StatusCode.OUT_OF_RANGE),
    (E.OutcomeUnknown, grpc.StatusCode.UNAVAILABLE),
    (E.NotApplied, grpc.StatusCode.UNAVAILABLE),
    (E.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (E.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (E.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (E.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (E.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (E.Cancelled, grpc.StatusCode.CANCELLED),
    (E.RegistryError, grpc.StatusCode.UNKNOWN),
)

_BY_NAME: dict[str, type[E.RegistryError]] = {cls.__name__: cls for cls, _ in STATUS_TABLE}

# Status codes that carry no raftreg metadata (raised by gRPC itself, or by a foreign server).
_BY_CODE: dict[grpc.StatusCode, type[E.RegistryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: E.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: E.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: E.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: E.FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: E.Compacted,
    grpc.StatusCode.UNAVAILABLE: E.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: E.DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: E.ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: E.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: E.Unauthenticated,
    grpc.StatusCode.CANCELLED: E.Cancelled,
}


def status_for(err: E.RegistryError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, details, trailing metadata) for an exception."""
    code = next(c for cls, c in STATUS_TABLE if isinstance(err, cls))
    md: list[tuple[str, str]] = [(ERROR_KEY, type(err).__name__)]
    if isinstance(err, E.Compacted):
        md.append((COMPACT_KEY, str(err.compact_revision)))
    return code, str(err) or type(err).__name__, tuple(md)


StatusFor = Callable[[E.RegistryError], tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]]

ETCD_PREFIX = "etcdserver: "

# etcd's code and fixed message per class, most specific first; None: etcd's prefix and ours.
_ETCD_TABLE: tuple[tuple[type[E.RegistryError], grpc.StatusCode, str | None], ...] = (
    (E.LeaseNotFound, grpc.StatusCode.NOT_FOUND, "requested lease not found"),
    (E.NotFound, grpc.StatusCode.NOT_FOUND, "member not found"),  # members: the other kind
    (E.Compacted, grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision has been compacted"),
    (E.FutureRevision, grpc.StatusCode.OUT_OF_RANGE,
     "mvcc: required revision is a future revision"),
    (E.OutcomeUnknown, grpc.StatusCode.UNAVAILABLE, "request timed out"),
    (E.AlreadyExists, grpc.StatusCode.FAILED_PRECONDITION, None),
    (E.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "permission denied"),
    (E.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "invalid auth token"),
)

# Our message -> etcd's, where they differ in words only.
_ETCD_MESSAGES = {
    "no leader to forward to": "no leader",
}


def etcd_status_for(
    err: E.RegistryError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """`status_for`, worded as etcd: (etcd's code, "etcdserver: <message>", metadata)."""
    code, details, md = status_for(err)
    for cls, etcd_code, message in _ETCD_TABLE:
        if isinstance(err, cls):
            code, details = etcd_code, message or details
            break
    if isinstance(err, E.InvalidArgument) and details.startswith("value is too large"):
        details = "request is too large"
    return code, ETCD_PREFIX + _ETCD_MESSAGES.get(details, details), md


def error_from_status(
    code: grpc.StatusCode, details: str, metadata: Iterable[tuple[str, str | bytes]] = ()
) -> E.RegistryError:
    """The exception a client raises for a failed call."""
    md = {k: v.decode() if isinstance(v, bytes) else v for k, v in metadata}
    cls = _BY_NAME.get(md.get(ERROR_KEY, "")) or _BY_CODE.get(code, E.RegistryError)
    message = details or code.name
    if issubclass(cls, E.Compacted):
        return E.Compacted(message, int(md.get(COMPACT_KEY, "0") or 0))
    return cls(message)
