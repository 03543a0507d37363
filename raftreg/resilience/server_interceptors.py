"""grpc.aio server interceptors: logging, bearer-token auth, rate limiting, deadlines.

Pass them to `grpc.aio.server(interceptors=[...])`; the first in the list is the outermost
(it sees the call first and its outcome last). A sensible order is
`[ServerLoggingInterceptor(), ServerDeadlineInterceptor(), ServerAuthInterceptor(...),
ServerRateLimitInterceptor(...)]`: every call is logged, including the refused ones.

Refusals (auth, rate limit, an already-passed deadline) happen before the method's behaviour
runs and carry the not-executed marker (`raftreg.common.status.NOT_EXECUTED_KEY`) in their
trailing metadata, so a client may retry even a non-idempotent call after them. A method the
server does not implement is left to gRPC (UNIMPLEMENTED) and uses no rate-limit bucket.

Log record fields (`ServerLoggingInterceptor`, as `extra=` attributes of one record per call,
also rendered in the message): `rpc_side` ("server"), `rpc_method` (full method name),
`rpc_peer` (e.g. "ipv4:127.0.0.1:53412"), `rpc_code` (status code name, e.g. "OK"),
`rpc_duration_ms` (float, behaviour start to end).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from raftreg.common.handlers import (
    Context,
    is_async_handler,
    rejecting_handler,
    wrap_handler,
)
from raftreg.common.status import NOT_EXECUTED_METADATA
from raftreg.resilience.clock import MONOTONIC, Clock
from raftreg.resilience.deadline import (
    Deadline,
    deadline_of_call,
    reset_current_deadline,
    set_current_deadline,
)
from raftreg.resilience.ratelimit import RateLimiter
from raftreg.resilience.rpc import MethodSet, metadata_pairs

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

DEFAULT_AUTH_EXEMPT: tuple[str, ...] = ("grpc.health.v1.Health",)

log = logging.getLogger(__name__)


class ServerLoggingInterceptor(_ServerInterceptor):
    """One log record per call (fields in the module docstring): at `level` when the call ends
    OK, at `error_level` otherwise."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        level: int = logging.INFO,
        error_level: int = logging.WARNING,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._log = logger or log
        self._level = level
        self._error_level = error_level
        self._clock = clock

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def start(context: Context) -> float:
            return self._clock.now()

        def finish(started: float, context: Context, code: grpc.StatusCode) -> None:
            duration_ms = (self._clock.now() - started) * 1000.0
            peer = context.peer()
            level = self._level if code is grpc.StatusCode.OK else self._error_level
            self._log.log(
                level,
                "rpc server method=%s peer=%s code=%s duration_ms=%.3f",
                method,
                peer,
                code.name,
                duration_ms,
                extra={
                    "rpc_side": "server",
                    "rpc_method": method,
                    "rpc_peer": peer,
                    "rpc_code": code.name,
                    "rpc_duration_ms": duration_ms,
                },
            )

        return wrap_handler(handler, start=start, finish=finish)


class ServerAuthInterceptor(_ServerInterceptor):
    """Requires `authorization: Bearer <token>` with one of `tokens`; answers UNAUTHENTICATED
    otherwise. Tokens are compared in constant time (digests compared with
    `hmac.compare_digest`, against every accepted token). `exempt` lists methods that need no
    token: a service name ("grpc.health.v1.Health") exempts all its methods, a full method name
    ("/pkg.Service/Method") just that one. `configure` replaces tokens/exemptions live."""

    def __init__(
        self,
        tokens: Iterable[str],
        *,
        exempt: Iterable[str] = DEFAULT_AUTH_EXEMPT,
        header: str = "authorization",
        scheme: str = "Bearer",
    ) -> None:
        self._header = header.lower()
        self._scheme = scheme.lower()
        self._digests: tuple[bytes, ...] = ()
        self._exempt = MethodSet()
        self.configure(tokens=tokens, exempt=exempt)

    def configure(
        self, *, tokens: Iterable[str] | None = None, exempt: Iterable[str] | None = None
    ) -> None:
        if tokens is not None:
            digests = tuple(_digest(t) for t in tokens if t)
            if not digests:
                raise ValueError("at least one non-empty token is required")
            self._digests = digests
        if exempt is not None:
            self._exempt = MethodSet(exempt)

    def is_exempt(self, method: str) -> bool:
        return method in self._exempt

    def authorized(self, metadata: object) -> bool:
        """Whether the metadata carries an accepted bearer token."""
        values = [v for k, v in metadata_pairs(metadata) if k.lower() == self._header]
        if len(values) != 1:
            return False
        value = values[0]
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != self._scheme or not token.strip():
            return False
        candidate = _digest(token.strip())
        ok = False
        for accepted in self._digests:
            ok |= hmac.compare_digest(candidate, accepted)
        return ok

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.is_exempt(handler_call_details.method):
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        return rejecting_handler(
            handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class ServerRateLimitInterceptor(_ServerInterceptor):
    """Answers RESOURCE_EXHAUSTED to the calls above the limiter's rate for their (service,
    method); the limiter is reconfigurable live (`RateLimiter.configure`).

    A token is taken when the call runs, not when its handler is looked up, so a call refused
    by an interceptor placed before this one (e.g. auth) never spends the budget of the calls
    that are let through. (grpc.aio looks handlers up through every interceptor, innermost
    first, before any behaviour runs.) Synchronous behaviours, which cannot be checked at run
    time here, are decided at lookup."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if not is_async_handler(handler):
            if self.limiter.try_acquire(method):
                return handler
            return rejecting_handler(
                handler, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")

        async def check(context: Context) -> None:
            if not self.limiter.try_acquire(method):
                context.set_trailing_metadata(NOT_EXECUTED_METADATA)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")

        return wrap_handler(handler, start=_no_start, finish=_no_finish, check=check)


def _no_start(context: Context) -> None:
    return None


def _no_finish(token: Any, context: Context, code: grpc.StatusCode) -> None:
    return None


class ServerDeadlineInterceptor(_ServerInterceptor):
    """Makes the incoming call's deadline the current deadline while its behaviour runs (so
    `ClientDeadlineInterceptor` applies it to the calls the behaviour makes); a call without a
    deadline gets `default_timeout_s` (None: stays unbounded). With `reject_expired`, an async
    behaviour whose call's deadline has already passed is not run: DEADLINE_EXCEEDED with the
    not-executed marker."""

    def __init__(
        self,
        *,
        default_timeout_s: float | None = None,
        reject_expired: bool = True,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._default = default_timeout_s
        self._reject = reject_expired
        self._clock = clock

    def _deadline(self, context: Context) -> Deadline | None:
        d = deadline_of_call(context, self._clock)
        if d is None and self._default is not None:
            d = Deadline.from_timeout(self._default, self._clock)
        return d

    async def _check(self, context: Context) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.set_trailing_metadata(NOT_EXECUTED_METADATA)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed on arrival")

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def start(context: Context) -> Any:
            return set_current_deadline(self._deadline(context))

        def finish(token: Any, context: Context, code: grpc.StatusCode) -> None:
            # ValueError: finalized in another context (an abandoned stream); nothing to restore.
            with contextlib.suppress(ValueError):
                reset_current_deadline(token)

        return wrap_handler(
            handler, start=start, finish=finish, check=self._check if self._reject else None
        )


__all__ = [
    "DEFAULT_AUTH_EXEMPT",
    "ServerAuthInterceptor",
    "ServerDeadlineInterceptor",
    "ServerLoggingInterceptor",
    "ServerRateLimitInterceptor",
]
