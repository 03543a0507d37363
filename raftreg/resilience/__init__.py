"""Resilience parts for services that talk gRPC (grpc.aio) and HTTP: deadlines and their
propagation, retries with exponential backoff, endpoint health, circuit breakers, rate limits,
and grpc.aio server and client interceptors built from them.

This package owns: `Deadline` and the current-deadline context variable (`deadline`),
`RetryPolicy`/`retry_call` (`retry`), the "not executed" rule and failure classification that
retry and breaker share (`rpc`), `EndpointHealth` (`endpoint_health`),
`CircuitBreaker`/`BreakerGroup` (`breaker`), `TokenBucket`/`RateLimiter` (`ratelimit`), the
server interceptors (`server_interceptors`) and client interceptors (`client_interceptors`, over
`client_interceptor_base`: one interceptor for all four call kinds, `client_chain`).
It re-exports what it builds on from `raftreg.common`: `Backoff`, the clocks (plus its own
`MonotonicClock`, `clock`), and `wrap_handler` / `refusing_handler`, with which any server
interceptor (the node's metrics and auth too) observes or refuses a call of any of the four
kinds. Every time-dependent part takes a `Clock`, so tests drive it with `ManualClock`.
Every threshold is a constructor argument and can be changed live (`configure`), because the
gateway reloads them from the config center. Everything is single-event-loop (not thread-safe).

Libraries: own code rather than tenacity (retries), aiolimiter (rate limits) or
pybreaker/purgatory/aiobreaker (breakers). Our needs are specific: retry decisions by gRPC
status plus a proven-not-executed rule for non-idempotent calls, bounded by a propagated
deadline; a breaker on a bucketed sliding time window with a minimum call count, bounded
concurrent half-open probes and live reconfiguration; limiters keyed by gRPC method and
reconfigurable live; and one injectable clock for all of them so tests are fast and exact. None
of those libraries covers more than a part of this, and adapting them would cost more than the
few hundred lines here.
"""

from __future__ import annotations

from raftreg.common.backoff import Backoff, Jitter
from raftreg.common.handlers import (
    handler_behavior,
    rebuild_handler,
    refusing_handler,
    wrap_handler,
)
from raftreg.common.status import NOT_EXECUTED_KEY, NOT_EXECUTED_METADATA
from raftreg.resilience.breaker import (
    FAILURE_CODES,
    BreakerGroup,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Permit,
    default_is_failure,
)
from raftreg.resilience.client_interceptor_base import ClientInterceptor, client_chain
from raftreg.resilience.client_interceptors import (
    ClientAuthInterceptor,
    ClientBreakerInterceptor,
    ClientDeadlineInterceptor,
    ClientLoggingInterceptor,
    ClientRateLimitInterceptor,
    ClientRetryInterceptor,
)
from raftreg.resilience.clock import MONOTONIC, Clock, LoopClock, ManualClock, MonotonicClock
from raftreg.resilience.deadline import (
    Deadline,
    current_deadline,
    deadline_from_header,
    deadline_of_call,
    deadline_scope,
    earliest,
    outgoing_timeout,
    parse_timeout,
)
from raftreg.resilience.endpoint_health import EndpointHealth
from raftreg.resilience.ratelimit import RateLimit, RateLimited, RateLimiter, TokenBucket
from raftreg.resilience.retry import (
    IDEMPOTENT_RETRY_ON,
    Attempt,
    RetryEvent,
    RetryPolicy,
    retry_call,
)
from raftreg.resilience.rpc import (
    Failure,
    MethodSet,
    classify,
    local_error,
)
from raftreg.resilience.server_interceptors import (
    DEFAULT_AUTH_EXEMPT,
    ServerAuthInterceptor,
    ServerDeadlineInterceptor,
    ServerLoggingInterceptor,
    ServerRateLimitInterceptor,
)

__all__ = [
    "DEFAULT_AUTH_EXEMPT",
    "FAILURE_CODES",
    "IDEMPOTENT_RETRY_ON",
    "MONOTONIC",
    "NOT_EXECUTED_KEY",
    "NOT_EXECUTED_METADATA",
    "Attempt",
    "Backoff",
    "BreakerGroup",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "ClientAuthInterceptor",
    "ClientBreakerInterceptor",
    "ClientDeadlineInterceptor",
    "ClientInterceptor",
    "ClientLoggingInterceptor",
    "ClientRateLimitInterceptor",
    "ClientRetryInterceptor",
    "Clock",
    "Deadline",
    "EndpointHealth",
    "Failure",
    "Jitter",
    "LoopClock",
    "ManualClock",
    "MethodSet",
    "MonotonicClock",
    "Permit",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RetryEvent",
    "RetryPolicy",
    "ServerAuthInterceptor",
    "ServerDeadlineInterceptor",
    "ServerLoggingInterceptor",
    "ServerRateLimitInterceptor",
    "TokenBucket",
    "classify",
    "client_chain",
    "current_deadline",
    "deadline_from_header",
    "deadline_of_call",
    "deadline_scope",
    "default_is_failure",
    "earliest",
    "handler_behavior",
    "local_error",
    "outgoing_timeout",
    "parse_timeout",
    "rebuild_handler",
    "refusing_handler",
    "retry_call",
    "wrap_handler",
]
