"""grpc.aio client interceptors: logging, bearer-token auth, deadline propagation, retry,
circuit breaking, client-side rate limiting.

grpc.aio files a client interceptor object under the *first* call kind it implements only
(unary-unary, then unary-stream, ...). So each interceptor here is a unary-unary interceptor
whose `all_kinds()` adds adapters for the three streaming kinds; `client_chain(a, b, ...)`
flattens interceptors into the list to pass as
`grpc.aio.insecure_channel(target, interceptors=client_chain(...))`. The first interceptor is
the outermost. A sensible order is `client_chain(ClientLoggingInterceptor(),
ClientDeadlineInterceptor(), ClientRetryInterceptor(...), ClientBreakerInterceptor(...),
ClientRateLimitInterceptor(...), ClientAuthInterceptor(...))`: one log record per logical
call, every attempt bounded by the propagated deadline and passing the breaker and limiter.

Kinds: retry covers unary-unary calls only (a stream that failed after responses arrived cannot
be replayed transparently); every other interceptor covers all four kinds. Refusals made here
(breaker open: UNAVAILABLE; rate limit: RESOURCE_EXHAUSTED; propagated deadline already passed:
DEADLINE_EXCEEDED) raise `grpc.aio.AioRpcError` without calling, marked not executed.

Log record fields (`ClientLoggingInterceptor`): `rpc_side` ("client"), `rpc_method`,
`rpc_peer` (the `target` given to the interceptor, "" if none), `rpc_code`,
`rpc_duration_ms` (call start to status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from raftreg.errors import DeadlineExceeded
from raftreg.resilience.breaker import BreakerGroup, CircuitBreaker
from raftreg.resilience.clock import MONOTONIC, Clock
from raftreg.resilience.deadline import Deadline, current_deadline, outgoing_timeout
from raftreg.resilience.ratelimit import RateLimiter, TokenBucket
from raftreg.resilience.retry import Attempt, RetryEvent, RetryPolicy, retry_call
from raftreg.resilience.rpc import (
    Failure,
    MethodSet,
    classify,
    failure_of_status,
    local_error,
    metadata_pairs,
    method_name,
)

if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor

Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]
# What `grpc.aio.insecure_channel(interceptors=...)` takes (grpc-stubs leave it a placeholder).
ChannelInterceptor = Any

log = logging.getLogger(__name__)


def _details(
    d: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = None,
    keep_timeout: bool = True,
    metadata: grpc.aio.Metadata | None = None,
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method,
        d.timeout if keep_timeout else timeout,
        d.metadata if metadata is None else metadata,
        d.credentials,
        d.wait_for_ready,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: Any

    def error(self) -> grpc.aio.AioRpcError:
        """The status as the exception a caller sees (meaningful when `code` is not OK)."""
        md = grpc.aio.Metadata(*metadata_pairs(self.trailing_metadata))
        return grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), md, self.details, None)


_OK = Outcome(grpc.StatusCode.OK, "", None)


class _Reporters:
    """Holds the tasks that read a finished stream call's status (so they are not collected)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def when_done(self, call: Any, on_done: Callable[[Outcome], None]) -> None:
        def callback(_: Any) -> None:
            task = asyncio.get_running_loop().create_task(self._report(call, on_done))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        call.add_done_callback(callback)

    @staticmethod
    async def _report(call: Any, on_done: Callable[[Outcome], None]) -> None:
        code = await call.code()
        if code is grpc.StatusCode.OK:
            on_done(_OK)
        else:
            on_done(Outcome(code, await call.details() or "", await call.trailing_metadata()))


async def _observe(
    continuation: Continuation,
    details: grpc.aio.ClientCallDetails,
    request: Any,
    streaming: bool,
    reporters: _Reporters,
    on_done: Callable[[Outcome], None],
) -> Any:
    """Make the call and report its outcome once: for a unary-unary call before returning it,
    for streaming calls when they finish."""
    try:
        call = await continuation(details, request)
        if streaming:
            reporters.when_done(call, on_done)
            return call
        code = await call.code()
    except grpc.aio.AioRpcError as e:
        on_done(Outcome(e.code(), e.details() or "", e.trailing_metadata()))
        raise
    except asyncio.CancelledError:
        on_done(Outcome(grpc.StatusCode.CANCELLED, "cancelled", None))
        raise
    except Exception as e:  # an inner interceptor failed: the call ends UNKNOWN
        on_done(Outcome(grpc.StatusCode.UNKNOWN, repr(e), None))
        raise
    if code is grpc.StatusCode.OK:
        on_done(_OK)
    else:
        on_done(Outcome(code, await call.details() or "", await call.trailing_metadata()))
    return call


class ClientInterceptor(_UnaryUnary):
    """Base: one `_intercept` for every call kind; `streaming` is true unless both the request
    and the response are unary. Pass `all_kinds()` to the channel to cover streams."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request, False)

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        raise NotImplementedError

    def all_kinds(self) -> list[ChannelInterceptor]:
        return [
            self,
            _UnaryStreamAdapter(self),
            _StreamUnaryAdapter(self),
            _StreamStreamAdapter(self),
        ]


class _UnaryStreamAdapter(_UnaryStream):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request, True)


class _StreamUnaryAdapter(_StreamUnary):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request_iterator, True)


class _StreamStreamAdapter(_StreamStream):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request_iterator, True)


def client_chain(*interceptors: Any) -> list[ChannelInterceptor]:
    """The channel's interceptor list: each interceptor's `all_kinds()` (or itself), in order."""
    out: list[ChannelInterceptor] = []
    for i in interceptors:
        kinds = getattr(i, "all_kinds", None)
        out.extend(kinds() if kinds is not None else [i])
    return out


class ClientLoggingInterceptor(ClientInterceptor):
    """One log record per call (fields in the module docstring)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        target: str | None = None,
        level: int = logging.INFO,
        error_level: int = logging.WARNING,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._log = logger or log
        self._target = target or ""
        self._level = level
        self._error_level = error_level
        self._clock = clock
        self._reporters = _Reporters()

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        method = method_name(details.method)
        started = self._clock.now()

        def done(outcome: Outcome) -> None:
            duration_ms = (self._clock.now() - started) * 1000.0
            code = outcome.code
            self._log.log(
                self._level if code is grpc.StatusCode.OK else self._error_level,
                "rpc client method=%s peer=%s code=%s duration_ms=%.3f",
                method,
                self._target,
                code.name,
                duration_ms,
                extra={
                    "rpc_side": "client",
                    "rpc_method": method,
                    "rpc_peer": self._target,
                    "rpc_code": code.name,
                    "rpc_duration_ms": duration_ms,
                },
            )

        return await _observe(continuation, details, request, streaming, self._reporters, done)


class ClientAuthInterceptor(ClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call that has no such header; `token` may
    be a callable, read per call (for rotated tokens)."""

    def __init__(
        self,
        token: str | Callable[[], str],
        *,
        header: str = "authorization",
        scheme: str = "Bearer",
    ) -> None:
        self._token = token
        self._header = header.lower()
        self._scheme = scheme

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        pairs = metadata_pairs(details.metadata)
        if any(k.lower() == self._header for k, _ in pairs):
            return await continuation(details, request)
        token = self._token() if callable(self._token) else self._token
        md = grpc.aio.Metadata(*pairs, (self._header, f"{self._scheme} {token}"))
        return await continuation(_details(details, metadata=md), request)


class ClientDeadlineInterceptor(ClientInterceptor):
    """Bounds every call by the current (propagated) deadline minus `margin_s`, and by the
    call's own timeout or else `default_timeout_s`. When the propagated deadline has passed,
    fails with DEADLINE_EXCEEDED (not executed) without calling."""

    def __init__(self, *, default_timeout_s: float | None = None, margin_s: float = 0.0) -> None:
        if margin_s < 0:
            raise ValueError("margin_s must be >= 0")
        self._default = default_timeout_s
        self._margin = margin_s

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        deadline = current_deadline()
        if deadline is not None and deadline.timeout(self._margin) <= 0:
            raise local_error(grpc.StatusCode.DEADLINE_EXCEEDED, "the propagated deadline passed")
        own = details.timeout if details.timeout is not None else self._default
        timeout = outgoing_timeout(own, deadline=deadline, margin_s=self._margin)
        return await continuation(_details(details, timeout=timeout, keep_timeout=False), request)


class _FailedCall(Exception):
    """Internal: an attempt ended with a non-OK status; carries the call to hand back."""

    def __init__(self, call: Any, failure: Failure) -> None:
        super().__init__(failure.code.name)
        self.call = call
        self.failure = failure


def _classify_attempt(exc: BaseException) -> Failure | None:
    return exc.failure if isinstance(exc, _FailedCall) else classify(exc)


class ClientRetryInterceptor(_UnaryUnary):
    """Retries unary-unary calls per `policy` (`raftreg.resilience.retry` states the rules).

    `idempotent` declares which methods may be retried after an ambiguous failure: a
    predicate over the full method name, or method/service names (see `MethodSet`); other
    methods are retried only after failures that prove the request was not executed. The call's
    own timeout and the current deadline bound all attempts together. When retries end, the
    caller gets the last attempt's call (its status, details and metadata)."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        idempotent: Callable[[str], bool] | Iterable[str] = (),
        clock: Clock = MONOTONIC,
        on_retry: Callable[[str, RetryEvent], None] | None = None,
    ) -> None:
        self.policy = policy
        self._idempotent: Callable[[str], bool] = (
            idempotent if callable(idempotent) else MethodSet(idempotent)
        )
        self._clock = clock
        self._on_retry = on_retry

    def all_kinds(self) -> list[ChannelInterceptor]:
        return [self]

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = method_name(client_call_details.method)
        own = client_call_details.timeout
        call_deadline = Deadline.from_timeout(own) if own is not None else None

        async def attempt(a: Attempt) -> Any:
            d = _details(client_call_details, timeout=a.timeout, keep_timeout=False)
            call = await continuation(d, request)
            code = await call.code()
            if code is grpc.StatusCode.OK:
                return call
            raise _FailedCall(call, failure_of_status(code, await call.trailing_metadata()))

        on_retry = self._on_retry
        try:
            return await retry_call(
                attempt,
                policy=self.policy,
                idempotent=self._idempotent(method),
                deadline=call_deadline,
                clock=self._clock,
                classify_error=_classify_attempt,
                on_retry=None if on_retry is None else (lambda ev: on_retry(method, ev)),
            )
        except _FailedCall as failed:
            return failed.call
        except DeadlineExceeded as e:
            raise local_error(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None


class ClientBreakerInterceptor(ClientInterceptor):
    """Passes calls through a circuit breaker: one `CircuitBreaker` for the channel (per
    target), or a `BreakerGroup` keyed by `key(full method)` (default: the method, i.e. per
    method). A rejected call fails with UNAVAILABLE "circuit ... is open" (not executed) and
    the server is not called. Outcomes are judged by the breaker's `is_failure`; a cancelled
    call records nothing."""

    def __init__(
        self,
        breakers: CircuitBreaker | BreakerGroup,
        *,
        key: Callable[[str], str] | None = None,
    ) -> None:
        self._breakers = breakers
        self._key = key or (lambda method: method)
        self._reporters = _Reporters()

    def breaker_for(self, method: str) -> CircuitBreaker:
        if isinstance(self._breakers, CircuitBreaker):
            return self._breakers
        return self._breakers.get(self._key(method))

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        breaker = self.breaker_for(method_name(details.method))
        permit = breaker.acquire()
        if permit is None:
            raise local_error(grpc.StatusCode.UNAVAILABLE, str(breaker.reject()))

        def done(outcome: Outcome) -> None:
            if outcome.code is grpc.StatusCode.OK:
                permit.record(True)
            elif outcome.code is grpc.StatusCode.CANCELLED or failure_of_status(
                outcome.code, outcome.trailing_metadata
            ).not_executed:
                permit.release()  # the server never answered this call: no evidence either way
            else:
                permit.record(not breaker.is_failure(outcome.error()))

        return await _observe(continuation, details, request, streaming, self._reporters, done)


class ClientRateLimitInterceptor(ClientInterceptor):
    """Limits the calls this client makes: one `TokenBucket` for the channel, or a
    `RateLimiter` per (service, method). Over the limit the call fails with RESOURCE_EXHAUSTED
    (not executed), or with `wait=True` waits for a token as long as the call's timeout and
    the current deadline allow (the wait counts against the call's timeout)."""

    def __init__(
        self, limiter: RateLimiter | TokenBucket, *, wait: bool = False, clock: Clock = MONOTONIC
    ) -> None:
        self._limiter = limiter
        self._wait = wait
        self._clock = clock

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        bucket = (
            self._limiter
            if isinstance(self._limiter, TokenBucket)
            else self._limiter.bucket(method_name(details.method))
        )
        if bucket is None:
            return await continuation(details, request)
        if not self._wait:
            if not bucket.try_acquire():
                raise local_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "client rate limit exceeded")
            return await continuation(details, request)
        started = self._clock.now()
        limit = outgoing_timeout(details.timeout, deadline=current_deadline())
        if not await bucket.acquire(timeout=limit):
            raise local_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "client rate limit exceeded")
        if details.timeout is None:
            return await continuation(details, request)
        left = max(0.0, details.timeout - (self._clock.now() - started))
        return await continuation(_details(details, timeout=left, keep_timeout=False), request)


__all__ = [
    "ClientAuthInterceptor",
    "ClientBreakerInterceptor",
    "ClientDeadlineInterceptor",
    "ClientInterceptor",
    "ClientLoggingInterceptor",
    "ClientRateLimitInterceptor",
    "ClientRetryInterceptor",
    "Outcome",
    "client_chain",
]
