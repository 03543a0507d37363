"""grpc.aio client interceptors: logging, bearer-token auth, deadline propagation, retry,
circuit breaking, client-side rate limiting.

Each is a `ClientInterceptor` (`client_interceptor_base`: one interceptor object for all four
call kinds via `all_kinds()`); pass them through `client_chain(a, b, ...)` to
`grpc.aio.insecure_channel(target, interceptors=...)`. The first interceptor is the outermost.
A sensible order is `client_chain(ClientLoggingInterceptor(), ClientDeadlineInterceptor(),
ClientRetryInterceptor(...), ClientBreakerInterceptor(...), ClientRateLimitInterceptor(...),
ClientAuthInterceptor(...))`: one log record per logical call, every attempt bounded by the
propagated deadline and passing the breaker and limiter.

Kinds: retry covers unary-unary calls only (a stream that failed after responses arrived cannot
be replayed transparently); every other interceptor covers all four kinds. Refusals made here
(breaker open: UNAVAILABLE; rate limit: RESOURCE_EXHAUSTED; propagated deadline already passed:
DEADLINE_EXCEEDED) raise `grpc.aio.AioRpcError` without calling, marked not executed.

Log record fields (`ClientLoggingInterceptor`): `rpc_side` ("client"), `rpc_method`,
`rpc_peer` (the `target` given to the interceptor, "" if none), `rpc_code`,
`rpc_duration_ms` (call start to status).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from raftreg.errors import DeadlineExceeded
from raftreg.resilience.breaker import BreakerGroup, CircuitBreaker
from raftreg.resilience.client_interceptor_base import (
    ChannelInterceptor,
    ClientInterceptor,
    Continuation,
    Outcome,
    Reporters,
    UnaryUnaryInterceptor,
    call_details,
    client_chain,
    observe,
)
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

log = logging.getLogger(__name__)


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
        self._reporters = Reporters()

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

        return await observe(continuation, details, request, streaming, self._reporters, done)


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
        return await continuation(call_details(details, metadata=md), request)


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
        return await continuation(
            call_details(details, timeout=timeout, keep_timeout=False), request)


class _FailedCall(Exception):
    """Internal: an attempt ended with a non-OK status; carries the call to hand back."""

    def __init__(self, call: Any, failure: Failure) -> None:
        super().__init__(failure.code.name)
        self.call = call
        self.failure = failure


def _classify_attempt(exc: BaseException) -> Failure | None:
    return exc.failure if isinstance(exc, _FailedCall) else classify(exc)


class ClientRetryInterceptor(UnaryUnaryInterceptor):
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
            d = call_details(client_call_details, timeout=a.timeout, keep_timeout=False)
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
        self._reporters = Reporters()

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

        return await observe(continuation, details, request, streaming, self._reporters, done)


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
        return await continuation(call_details(details, timeout=left, keep_timeout=False), request)


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
