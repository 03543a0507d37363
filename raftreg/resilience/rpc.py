"""gRPC status semantics shared by the resilience parts: method names, locally made status
errors, and the one classification of a failure (`classify`) that retry and breaker rely on.

"Not executed" rule (what makes a non-idempotent call safe to retry). A failure proves the
callee did not execute the request only when
- its trailing metadata carries `NOT_EXECUTED_KEY` (set by this package wherever it refuses a
  call before the handler runs: server auth/rate-limit/deadline interceptors, client breaker,
  client rate limit, an already-passed propagated deadline), or
- a raftreg server vouched for it (`raftreg-error: NotApplied`), or
- it is `raftreg.errors.NotApplied`, or any exception whose `not_executed` attribute is true
  (`CircuitOpen`, `RateLimited`).
Nothing else counts: a bare UNAVAILABLE from gRPC may come from a connection that broke after
the request left, and DEADLINE_EXCEEDED/CANCELLED/ABORTED say nothing about execution.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio

from raftreg import errors as E
from raftreg.common.status import (
    ERROR_KEY,
    NOT_EXECUTED_KEY,
    NOT_EXECUTED_METADATA,
    status_for,
)


def method_name(method: str | bytes) -> str:
    """The full method name as text (grpc.aio client call details carry bytes)."""
    return method.decode() if isinstance(method, bytes) else method


def split_method(full_method: str) -> tuple[str, str]:
    """`"/pkg.Service/Method"` -> `("pkg.Service", "Method")`; anything else -> `("", name)`."""
    parts = full_method.split("/")
    if len(parts) == 3 and parts[0] == "" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return "", full_method


class MethodSet:
    """A set of gRPC methods: entries are full method names ("/pkg.Service/Method", the leading
    slash optional) or service names ("pkg.Service": all its methods)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for entry in entries:
            name = entry.strip("/")
            if "/" in name:
                exact.add(f"/{name}")
            elif name:
                prefixes.append(f"/{name}/")
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __contains__(self, full_method: object) -> bool:
        return isinstance(full_method, str) and (
            full_method in self._exact or full_method.startswith(self._prefixes)
        )

    def __call__(self, full_method: str) -> bool:
        return full_method in self


def local_error(
    code: grpc.StatusCode, details: str, *, not_executed: bool = True
) -> grpc.aio.AioRpcError:
    """A status error made on the client side, shaped like one from a server (what a caller of
    a grpc.aio stub catches); marked not executed unless told otherwise."""
    trailing = grpc.aio.Metadata(*NOT_EXECUTED_METADATA) if not_executed else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


def metadata_pairs(md: object) -> tuple[tuple[str, str | bytes], ...]:
    """(key, value) pairs of any metadata container (grpc.aio.Metadata, tuples, None)."""
    if not md:
        return ()
    return tuple((k, v) for k, v in cast(Iterable[tuple[str, Any]], md))


def metadata_value(md: object, key: str) -> str | None:
    """The first value of `key` as text, or None."""
    for k, v in metadata_pairs(md):
        if k == key:
            return v.decode(errors="replace") if isinstance(v, bytes) else v
    return None


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed call means for retrying: its status code, and whether it is proven that
    the callee did not execute the request."""

    code: grpc.StatusCode
    not_executed: bool


def failure_of_status(code: grpc.StatusCode, trailing_metadata: object) -> Failure:
    """Classify a finished call by its status and trailing metadata (see the module docstring)."""
    not_executed = metadata_value(trailing_metadata, NOT_EXECUTED_KEY) == "1" or (
        code is grpc.StatusCode.UNAVAILABLE
        and metadata_value(trailing_metadata, ERROR_KEY) == E.NotApplied.__name__
    )
    return Failure(code, not_executed)


def classify(exc: BaseException) -> Failure | None:
    """The `Failure` an exception stands for, or None if it is not a call failure at all (a bug,
    cancellation): those are never retried."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return failure_of_status(exc.code(), exc.trailing_metadata())
    if isinstance(exc, E.RegistryError):
        code, _, _ = status_for(exc)
        not_executed = bool(getattr(exc, "not_executed", False)) or isinstance(exc, E.NotApplied)
        return Failure(code, not_executed)
    return None
