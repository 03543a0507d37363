"""The one table between raftreg's exceptions and gRPC status codes.

The server answers every `RegistryError` with the status code below, the message as details,
and the exception's class name in the trailing metadata key `raftreg-error` (plus
`raftreg-compact-revision` for `Compacted`). The client reverses it with `error_from_status`,
so both ends agree on one table.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from raftreg import errors as E

ERROR_KEY = "raftreg-error"
COMPACT_KEY = "raftreg-compact-revision"

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
