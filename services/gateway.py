"""The example API gateway: HTTP/JSON in front of the `user` (and `chat`) instances it
discovers in the registry, balancing every call across them on the client side, with live
settings from the config center, a rate limit, circuit breakers, deadlines and retries.

`python -m services.gateway --id g1 --policy weighted_round_robin --registry raftreg://...`
registers as service `gateway` with its HTTP address.

HTTP API:
- `GET /user?id=N`, `GET /user/{id}` (no id: user 1): GetUser on one `user` instance picked by
  the policy -> 200 `{"id": N, "name", "age", "served_by"}`. Errors are JSON `{"error",
  "code"}`: 400 bad id or timeout header, 404 NOT_FOUND, 503 no instance or UNAVAILABLE
  everywhere, 504 DEADLINE_EXCEEDED, 429 RESOURCE_EXHAUSTED (the gateway's rate limit or an
  instance's), 502 anything else (UNAUTHENTICATED included: the gateway's token is wrong, not
  the HTTP client's). The balancing key (for `consistent_hash`) is the `X-Route-Key` header,
  else the `key` query parameter, else the user id.
- `POST /chat` `{"content": "..."}`: one message through a `chat` instance's SyncStream ->
  `{"content": "Echo: ...", "timestamp", "served_by"}`.
- `GET /stats`: the policy, the live `user` instances, calls served per instance, outstanding
  calls, ejected instances, `stale_for` (seconds since the resolver heard from the registry;
  null before the first list), the resolver's revision, HTTP responses by status, the
  breakers (`breakers`: per instance id `state` closed/open/half_open, `successes`/`failures`
  in the window, `retry_after` seconds, `opened` = times it opened), `rate_limited` (429s by
  route), `retries` (GetUser retries made), `fallbacks` (answers made because every breaker was
  open), `config` (the config service, the `revision` in force, the last `seen_revision`,
  `last_error` of a rejected change, the `settings` in force), and the same for `chat`.
- `POST /admin/policy` `{"policy": NAME}`: switch the balancing policy live (a new balancer
  with fresh state, also when NAME is the current policy); it holds until the config center's
  `balancer.policy` changes.
- `GET /healthz`: 200 while at least one `user` instance is known, else 503.

Live settings (reference document 4.2): `ConfigWatcher` keeps a `GatewayConfig` current from
`/config/<config service>/` (`--config-service`, default the `--service` name, so
`raftreg config set gateway ratelimit.rps=50` reconfigures the gateways of service `gateway`).
Precedence: config center, then the command line (`--policy`, `--deadline-ms`, `--attempts`),
then the defaults below. Every change is applied at once, without restart: the limiter, the
breakers and the outlier detector are reconfigured in place, the retry policy and deadline
are used from the next request on, a new policy replaces the balancer. An invalid change
(unknown name, wrong type, out of range) is refused with one WARNING line on the
"raftreg.config" logger (`config of <service> at revision R rejected, keeping revision K:
<reason>`) and the last good settings stay in force; an invalid stored config at startup
fails the start.

| setting                      | default         | meaning                                     |
|------------------------------|-----------------|---------------------------------------------|
| deadline_ms                  | --deadline-ms   | deadline of one request, retries included;  |
|                              | (1000)          | a request's `grpc-timeout` (gRPC syntax,    |
|                              |                 | e.g. `250m`) or `X-Request-Timeout` (that,  |
|                              |                 | or decimal seconds) header can shorten it   |
| balancer.policy              | --policy        | one of raftreg.discovery.POLICIES           |
| ratelimit.rps                | null            | requests/s over the API routes (/user,      |
|                              |                 | /chat) together; null: unlimited            |
| ratelimit.burst              | null            | bucket size of each limit; null: max(1, rps)|
| ratelimit.routes             | {}              | requests/s per route, e.g. {"/user": 50},   |
|                              |                 | on top of ratelimit.rps                     |
| breaker.enabled              | true            | a circuit breaker per `user` instance       |
| breaker.failure_rate         | 0.5             | open at this share of failed calls ...      |
| breaker.window_s             | 10              | ... over this sliding window ...            |
| breaker.min_calls            | 20              | ... once it holds this many calls           |
| breaker.open_for_s           | 30              | open (not picked) this long, then half-open |
| breaker.half_open_probes     | 3               | probes let through half-open; all succeed:  |
|                              |                 | closed, one fails: open again               |
| retry.attempts               | --attempts (3)  | GetUser attempts per request                |
| retry.base_ms                | 10              | backoff before retry n: base*multiplier^(n-1)|
| retry.multiplier             | 2               |   capped at max_ms, with `jitter` ("equal": |
| retry.max_ms                 | 200             |   half of it fixed; "full"; "none")         |
| retry.jitter                 | "equal"         |                                             |
| retry.codes                  | ["UNAVAILABLE"] | status codes that are retried               |
| retry.attempt_timeout_ms     | null            | cap of one attempt (null: the deadline)     |
| outlier.consecutive_failures | 5               | passive outlier ejection (`OutlierDetector`)|
| outlier.ejection_s           | 10              |   base ejection time                        |
| outlier.max_ejection_s       | 60              |                                             |
| outlier.max_ejected_fraction | 0.5             |   0 turns outlier ejection off              |

Resilience of the upstream calls:
- Rate limit: `/user` and `/chat` requests above the limit are answered 429 at once, JSON
  `{"error", "code": "RESOURCE_EXHAUSTED", "retry_after_ms"}` with a `Retry-After` header (the
  HTTP mapping of RESOURCE_EXHAUSTED); counted in `/stats` (`rate_limited`, `responses`).
  `/stats`, `/healthz` and `/admin/*` are never limited.
- Breakers (reference document 4.4): one per `user` instance around GetUser. An instance whose
  breaker is open is not picked; a half-open one gets at most `half_open_probes` calls at a
  time. Calls refused with the not-executed marker (auth, rate limit, deadline passed) and
  answers such as NOT_FOUND do not count against an instance. Fallback: when every instance's
  breaker refuses, the answer is 503 `{"error", "code": "UNAVAILABLE", "fallback": true,
  "retry_after_ms"}` with a `Retry-After` header, at once and without calling anyone.
- Deadlines (reference document 2.4): each request runs under `deadline_scope` of its deadline;
  the upstream channels' `ClientDeadlineInterceptor` bounds every call by it (minus 5 ms), so
  the user instance sees it as its call's deadline (`context.time_remaining()`).
  `--connect-timeout-ms` is the channels' connect timeout.
- Retries: GetUser is idempotent, so it is retried (`retry_call`) on the `retry.codes`, with
  exponential backoff, while the request's deadline leaves room for the wait; every attempt
  goes to an instance this request has not tried yet while there is one (one INFO line
  `<CODE> on <service>/<id>; retrying in <ms> ms (attempt <n> of <max>)` per retry).
  `POST /chat` is a stream and in general not idempotent: it is never replayed after an
  answer was read (the one answer ends the call), and it is retried on another instance only
  for UNAVAILABLE, up to `retry.attempts` instances, because the chat service is a
  side-effect-free echo (a repeat cannot change anything). A chat service with side effects
  would need `attempts=1` there.
- Auth: `--upstream-token` (default $RAFTREG_SERVICE_TOKEN) is sent as `authorization: Bearer`
  on every upstream call (`ClientAuthInterceptor`).
- Logging: every upstream call is logged by `ClientLoggingInterceptor` on "services.rpc"
  (fields `rpc_side`, `rpc_method`, `rpc_peer`, `rpc_code`, `rpc_duration_ms`; OK calls at
  `--rpc-log-level`, failures at WARNING).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio
from aiohttp import web

from raftreg.client.protocol import RegistryClient
from raftreg.configcenter import ConfigWatcher, dataclass_parser
from raftreg.discovery import (
    POLICIES,
    Balancer,
    Instance,
    NoInstance,
    OutlierDetector,
    Resolver,
    ServiceChannels,
    make_balancer,
)
from raftreg.errors import DeadlineExceeded, InvalidArgument
from raftreg.resilience import (
    FAILURE_CODES,
    MONOTONIC,
    Attempt,
    Backoff,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Clock,
    Deadline,
    Failure,
    RetryEvent,
    RetryPolicy,
    TokenBucket,
    classify,
    deadline_from_header,
    deadline_scope,
    earliest,
    retry_call,
)
from services.chat import now_ms
from services.pb import chat_pb2, chat_pb2_grpc, user_pb2, user_pb2_grpc
from services.runtime import (
    ChannelSettings,
    ServiceRuntime,
    ServiceSettings,
    client_channel,
    run_service,
    service_parser,
    settings_from_args,
    tokens_from,
)

T = TypeVar("T")
log = logging.getLogger("services.gateway")

ROUTE_KEY_HEADER = "X-Route-Key"
TIMEOUT_HEADERS = ("grpc-timeout", "X-Request-Timeout")
API_ROUTES = ("/user", "/chat")

HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType({
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
})


class EmptyStream(Exception):
    """The chat stream ended without an answer."""


class AllCircuitsOpen(NoInstance):
    """There are instances, but every one's breaker refuses calls now; nothing was sent.
    `retry_after` is the time (s) until the first of them lets probes through."""

    def __init__(self, service: str, retry_after: float) -> None:
        super().__init__(f"every instance of {service} has an open circuit")
        self.retry_after = retry_after


# ---------------------------------------------------------------------- live settings


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class RateLimitConfig:
    """`rps`: requests/s over all API routes together (None: unlimited); `routes`: requests/s
    per route, on top; `burst`: each bucket's size (None: max(1, its rate))."""

    rps: float | None = None
    burst: float | None = None
    routes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("ratelimit.rps", self.rps)
        if self.burst is not None and not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"ratelimit.burst must be >= 1, not {self.burst!r}")
        for route, rps in self.routes.items():
            if route not in API_ROUTES:
                raise ValueError(f"ratelimit.routes: {route!r} is not one of {list(API_ROUTES)}")
            _positive(f"ratelimit.routes[{route!r}]", rps)


@dataclass(frozen=True)
class BreakerConfig:
    """The per-instance breakers' thresholds (`raftreg.resilience.breaker`)."""

    enabled: bool = True
    failure_rate: float = 0.5
    window_s: float = 10.0
    min_calls: int = 20
    open_for_s: float = 30.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        self.settings()  # raises ValueError for an out-of-range threshold

    def settings(self) -> BreakerSettings:
        return BreakerSettings(
            failure_rate=self.failure_rate,
            window_s=self.window_s,
            min_calls=self.min_calls,
            open_for_s=self.open_for_s,
            half_open_probes=self.half_open_probes,
        )


@dataclass(frozen=True)
class BalancerConfig:
    policy: str = "weighted_round_robin"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"unknown balancing policy {self.policy!r}; one of {', '.join(sorted(POLICIES))}"
            )


@dataclass(frozen=True)
class RetryConfig:
    """GetUser retries (see the module docstring)."""

    attempts: int = 3
    base_ms: float = 10.0
    multiplier: float = 2.0
    max_ms: float = 200.0
    jitter: Literal["full", "equal", "none"] = "equal"
    codes: tuple[str, ...] = ("UNAVAILABLE",)
    attempt_timeout_ms: float | None = None

    def __post_init__(self) -> None:
        for name in self.codes:
            if name not in grpc.StatusCode.__members__ or name == "OK":
                raise ValueError(f"retry.codes: {name!r} is not a failure status code")
        self.policy()  # raises ValueError for an out-of-range value

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.attempts,
            budget_s=None,  # the request's deadline bounds the retries
            backoff=Backoff(
                base=self.base_ms / 1000,
                multiplier=self.multiplier,
                max_delay=self.max_ms / 1000,
                jitter=self.jitter,
            ),
            retry_on=frozenset(grpc.StatusCode[name] for name in self.codes),
            attempt_timeout_s=(
                None if self.attempt_timeout_ms is None else self.attempt_timeout_ms / 1000
            ),
        )


@dataclass(frozen=True)
class OutlierConfig:
    """The passive outlier detector's thresholds (`raftreg.discovery.OutlierDetector`)."""

    consecutive_failures: int = 5
    ejection_s: float = 10.0
    max_ejection_s: float = 60.0
    max_ejected_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("outlier.consecutive_failures must be >= 1")
        if not 0 <= self.ejection_s <= self.max_ejection_s:
            raise ValueError("need 0 <= outlier.ejection_s <= outlier.max_ejection_s")
        if not 0 <= self.max_ejected_fraction <= 1:
            raise ValueError("outlier.max_ejected_fraction must be in [0, 1]")

    def apply(self, detector: OutlierDetector) -> None:
        detector.consecutive_failures = self.consecutive_failures
        detector.base_ejection_s = self.ejection_s
        detector.max_ejection_s = self.max_ejection_s
        detector.max_ejected_fraction = self.max_ejected_fraction


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's live settings (table in the module docstring)."""

    deadline_ms: float = 1000.0
    balancer: BalancerConfig = BalancerConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    outlier: OutlierConfig = OutlierConfig()

    def __post_init__(self) -> None:
        _positive("deadline_ms", self.deadline_ms)


def config_parser(defaults: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], GatewayConfig]:
    """A parser (for `ConfigWatcher`) of a `GatewayConfig` from the stored settings, with
    `defaults` (setting name -> value, e.g. from the command line) under them."""
    parse = dataclass_parser(GatewayConfig)
    base = dict(defaults)

    def parse_gateway_config(settings: Mapping[str, Any]) -> GatewayConfig:
        return parse({**base, **settings})

    return parse_gateway_config


def _flat(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, Mapping) and k != "routes":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: GatewayConfig | None, new: GatewayConfig) -> list[str]:
    """`name=value` for every setting `new` has differently from `old` (all without `old`)."""
    before = _flat(dataclasses.asdict(old)) if old is not None else {}
    return [
        f"{k}={v!r}"
        for k, v in sorted(_flat(dataclasses.asdict(new)).items())
        if old is None or before.get(k) != v
    ]


# ---------------------------------------------------------------------- rate limit, breakers


class HttpRateLimiter:
    """Token buckets for the API routes: one shared by all of them (`RateLimitConfig.rps`) and
    one per route in `routes`. A request is admitted only if every bucket that applies to it
    has a token, and then takes one from each. `configure` applies a new config live; buckets
    that stay limited keep their tokens (capped at the new burst)."""

    def __init__(self, config: RateLimitConfig, *, clock: Clock = MONOTONIC) -> None:
        self._clock = clock
        self._all: TokenBucket | None = None
        self._routes: dict[str, TokenBucket] = {}
        self.configure(config)

    def _bucket(self, old: TokenBucket | None, rps: float | None, burst: float | None
                ) -> TokenBucket | None:
        if rps is None:
            return None
        size = burst if burst is not None else max(1.0, rps)
        if old is None:
            return TokenBucket(rps, size, clock=self._clock)
        old.configure(rps, size)
        return old

    def configure(self, config: RateLimitConfig) -> None:
        self._all = self._bucket(self._all, config.rps, config.burst)
        self._routes = {
            route: bucket
            for route, rps in config.routes.items()
            if (bucket := self._bucket(self._routes.get(route), rps, config.burst)) is not None
        }

    def admit(self, route: str) -> float | None:
        """None when a request to `route` may go now (its tokens taken); else the seconds
        until it could."""
        buckets = [b for b in (self._routes.get(route), self._all) if b is not None]
        waits = [(1.0 - b.tokens) / b.rate_per_s for b in buckets if b.tokens < 1.0]
        if waits:
            return max(waits)
        for b in buckets:
            b.try_acquire()
        return None


def counts_against_instance(exc: BaseException) -> bool:
    """Whether a failed call says the instance is unhealthy: a status in the breakers'
    `FAILURE_CODES` that does not prove the request was refused unexecuted, or an exception
    that is not a call status at all."""
    failure = classify(exc)
    return failure is None or (failure.code in FAILURE_CODES and not failure.not_executed)


class InstanceBreakers:
    """One `CircuitBreaker` per instance id of one service, all with the same settings;
    `track` follows the live instances (new ones get a closed breaker, gone ones are dropped),
    `configure` applies new settings to all of them live. Disabled: no breakers."""

    def __init__(self, service: str, config: BreakerConfig, *, clock: Clock = MONOTONIC) -> None:
        self.service = service
        self._config = config
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._ids: tuple[str, ...] = ()
        self.opened: collections.Counter[str] = collections.Counter()

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def _new(self, instance_id: str) -> CircuitBreaker:
        return CircuitBreaker.from_settings(
            instance_id, self._config.settings(), clock=self._clock,
            on_state_change=self._changed, is_failure=counts_against_instance,
        )

    def _changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            self.opened[breaker.name] += 1
        log.log(
            logging.WARNING if new is BreakerState.OPEN else logging.INFO,
            "breaker %s/%s: %s -> %s", self.service, breaker.name, old.value, new.value,
        )

    def track(self, instance_ids: Sequence[str]) -> None:
        self._ids = tuple(instance_ids)
        if not self.enabled:
            return
        self._breakers = {i: self._breakers.get(i) or self._new(i) for i in self._ids}

    def configure(self, config: BreakerConfig) -> None:
        old, self._config = self._config, config
        if not config.enabled:
            self._breakers.clear()
        elif not old.enabled:
            self.track(self._ids)
        elif config.settings() != old.settings():
            for b in self._breakers.values():
                b.configure(**dataclasses.asdict(config.settings()))

    def get(self, instance_id: str) -> CircuitBreaker | None:
        """The breaker of `instance_id` (None when disabled); made on demand for an instance
        not tracked yet."""
        if not self.enabled:
            return None
        b = self._breakers.get(instance_id)
        if b is None:
            b = self._breakers[instance_id] = self._new(instance_id)
        return b

    def open_ids(self) -> frozenset[str]:
        """Ids whose breaker is open now (an open breaker whose wait is over is half-open)."""
        return frozenset(i for i, b in self._breakers.items() if b.state is BreakerState.OPEN)

    def retry_after(self) -> float:
        """Seconds until the first open breaker lets probes through (0 if none is open)."""
        waits = [b.retry_after() for b in self._breakers.values()]
        return min((w for w in waits if w > 0), default=0.0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for iid, b in sorted(self._breakers.items()):
            ok, bad = b.counts()
            out[iid] = {
                "state": b.state.value,
                "successes": ok,
                "failures": bad,
                "retry_after": round(b.retry_after(), 3),
                "opened": self.opened[iid],
            }
        return out


@dataclass(slots=True)
class _Route:
    """One GetUser request's routing state: `tried` = instances it called (avoided while there
    are others), `refused` = instances whose breaker refused it (never picked again by it)."""

    tried: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    last: str = ""


# The routing state of the request the current task serves (None outside a GetUser request).
_ROUTE: ContextVar[_Route | None] = ContextVar("services_gateway_route", default=None)
_NO_LOAD: Mapping[str, int] = MappingProxyType({})


class _AnyOf:
    """Membership in any of several containers (an `exclude` for a balancer)."""

    __slots__ = ("_parts",)

    def __init__(self, *parts: Container[str]) -> None:
        self._parts = parts

    def __contains__(self, item: object) -> bool:
        return any(item in p for p in self._parts)


class GuardedBalancer:
    """A balancing policy (`inner`) that never picks an instance whose breaker is open or
    refused the current request, and prefers instances the current request has not tried yet
    (falling back to tried ones only when nothing else is left). Returns None when every
    instance is blocked by a breaker, so the caller sees `NoInstance` without any call."""

    def __init__(self, inner: Balancer, breakers: InstanceBreakers) -> None:
        self.inner = inner
        self.name = inner.name
        self._breakers = breakers

    def update(self, instances: Sequence[Instance]) -> None:
        self.inner.update(instances)

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        route = _ROUTE.get()
        hard = _AnyOf(exclude, self._breakers.open_ids(), route.refused if route else ())
        if route is not None and route.tried:
            inst = self.inner.pick(key, exclude=_AnyOf(hard, route.tried), load=load)
            if inst is not None:
                return inst
        return self.inner.pick(key, exclude=hard, load=load)


# ---------------------------------------------------------------------- the gateway


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The gateway's fixed settings. `policy`, `deadline` (seconds) and `attempts` are the
    defaults of the live settings `balancer.policy`, `deadline_ms` and `retry.attempts`;
    `config_service` is the service whose config center settings the gateway follows (None:
    none, the command line only); `channel` is how upstream channels are opened."""

    user_service: str = "user"
    chat_service: str = "chat"
    policy: str = "weighted_round_robin"
    deadline: float = 1.0
    attempts: int = 3
    start_timeout: float = 10.0
    config_service: str | None = None
    channel: ChannelSettings = field(default_factory=ChannelSettings)

    def config_defaults(self) -> dict[str, Any]:
        return {
            "balancer.policy": self.policy,
            "deadline_ms": self.deadline * 1000,
            "retry.attempts": self.attempts,
        }


def _instance_json(inst: Instance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "address": inst.address,
        "weight": inst.weight,
        "zone": inst.zone,
        "version": inst.version,
        "metadata": dict(inst.metadata),
    }


def _finite(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _classify_for_retry(exc: BaseException) -> Failure | None:
    # No instance to call (none at all, or every breaker open) is answered at once: waiting a
    # backoff would not change it within a request's deadline.
    return None if isinstance(exc, NoInstance) else classify(exc)


class Gateway:
    """The gateway's routing state and HTTP handlers; see the module docstring.

    `users` / `chats` (`ServiceChannels`) and their resolvers, `breakers`, `http_limiter` and
    `config` (the `GatewayConfig` in force) are public attributes; every upstream call goes
    through `call_users` / `call_chats`. `start()` / `stop()` follow and release the registry
    and the config (the caller owns `client`)."""

    def __init__(
        self,
        client: RegistryClient,
        settings: GatewaySettings,
        *,
        instance_id: str = "",
        outlier: OutlierDetector | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        make_balancer(settings.policy)  # InvalidArgument for an unknown policy, before anything
        self.settings = settings
        self.instance_id = instance_id
        self._parse = config_parser(settings.config_defaults())
        try:
            self.config = self._parse({})
        except ValueError as e:
            raise InvalidArgument(f"gateway settings: {e}") from None
        self.deadline = self.config.deadline_ms / 1000
        self._retry_policy = self.config.retry.policy()
        self.http_limiter = HttpRateLimiter(self.config.ratelimit, clock=clock)
        self.breakers = InstanceBreakers(settings.user_service, self.config.breaker, clock=clock)

        def factory(address: str) -> grpc.aio.Channel:
            return client_channel(address, settings.channel)

        self.user_resolver = Resolver(client, settings.user_service)
        # attempts=1: get_user makes the attempts (retry_call), each one a ServiceChannels call
        self.users = ServiceChannels(
            self.user_resolver,
            policy=GuardedBalancer(make_balancer(self.config.balancer.policy), self.breakers),
            outlier=outlier, channel_factory=factory, attempts=1,
        )
        self.config.outlier.apply(self.users.outlier)
        self.chat_resolver = Resolver(client, settings.chat_service)
        self.chats = ServiceChannels(
            self.chat_resolver, policy="round_robin", channel_factory=factory,
            attempts=self.config.retry.attempts,
        )
        self.watcher: ConfigWatcher[GatewayConfig] | None = None
        if settings.config_service is not None:
            self.watcher = ConfigWatcher(
                client, settings.config_service, self._parse, self._apply_config
            )
        self.responses: collections.Counter[int] = collections.Counter()
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.fallbacks = 0
        self._untrack: Callable[[], None] | None = None

    async def start(self) -> None:
        """Load the live settings, then follow both services; returns after their first list
        (`Unavailable` after `start_timeout`; `InvalidArgument` for an invalid stored config)."""
        if self.watcher is not None:
            await self.watcher.start()
        self._untrack = self.user_resolver.subscribe(
            lambda instances: self.breakers.track([i.id for i in instances])
        )
        await asyncio.gather(
            self.user_resolver.start(timeout=self.settings.start_timeout),
            self.chat_resolver.start(timeout=self.settings.start_timeout),
        )
        self.breakers.track([i.id for i in self.user_resolver.instances])
        self.users.start()
        self.chats.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        if self._untrack is not None:
            self._untrack()
        await self.users.close()
        await self.chats.close()
        await self.user_resolver.stop()
        await self.chat_resolver.stop()

    def _apply_config(self, new: GatewayConfig, old: GatewayConfig | None) -> None:
        """Put `new` in force (the watcher calls this for the initial config and each valid
        change, one at a time)."""
        self.config = new
        self.deadline = new.deadline_ms / 1000
        self._retry_policy = new.retry.policy()
        self.http_limiter.configure(new.ratelimit)
        self.breakers.configure(new.breaker)
        new.outlier.apply(self.users.outlier)
        if old is None or new.balancer.policy != old.balancer.policy:
            self.set_policy(new.balancer.policy)
        revision = self.watcher.revision if self.watcher is not None else 0
        log.info(
            "config revision %d in force: %s", revision, " ".join(config_changes(old, new))
        )

    def set_policy(self, name: str) -> None:
        """A new balancer of policy `name` (fresh state) for the `user` calls."""
        self.users.set_policy(GuardedBalancer(make_balancer(name), self.breakers))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/user", self._limited("/user", self.handle_user))
        app.router.add_get("/user/{id}", self._limited("/user", self.handle_user))
        app.router.add_post("/chat", self._limited("/chat", self.handle_chat))
        app.router.add_get("/stats", self.handle_stats)
        app.router.add_post("/admin/policy", self.handle_policy)
        app.router.add_get("/healthz", self.handle_healthz)

    # ------------------------------------------------------------------ upstream calls

    async def call_users(
        self,
        fn: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        key: bytes | None = None,
        on_pick: Callable[[Instance], None] | None = None,
    ) -> T:
        return await self.users.call(fn, key=key, on_pick=on_pick)

    async def call_chats(self, fn: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        return await self.chats.call(fn, attempts=self.config.retry.attempts)

    async def get_user(
        self, user_id: str, *, key: bytes | None = None
    ) -> user_pb2.GetUserResponse:
        """GetUser within the current deadline (tightened to `deadline_ms`), retried per the
        retry settings. Raises `grpc.aio.AioRpcError`, `NoInstance` (`AllCircuitsOpen` when
        breakers refuse every instance) or `DeadlineExceeded` (no time left to try)."""
        request = user_pb2.GetUserRequest(user_id=user_id)
        route = _Route()
        token = _ROUTE.set(route)
        policy = self._retry_policy

        def on_retry(event: RetryEvent) -> None:
            self.retries += 1
            log.info(
                "%s on %s/%s; retrying in %.0f ms (attempt %d of %d)", event.code.name,
                self.users.service, route.last, event.delay * 1000, event.attempt + 1,
                policy.max_attempts,
            )

        try:
            with deadline_scope(Deadline.from_timeout(self.deadline)):
                return await retry_call(
                    lambda attempt: self._get_user_once(request, attempt, route, key),
                    policy=policy, idempotent=True, classify_error=_classify_for_retry,
                    on_retry=on_retry,
                )
        finally:
            _ROUTE.reset(token)

    async def _get_user_once(
        self,
        request: user_pb2.GetUserRequest,
        attempt: Attempt,
        route: _Route,
        key: bytes | None,
    ) -> user_pb2.GetUserResponse:
        """One attempt: one call on an instance whose breaker admits it. An instance whose
        breaker refuses (half-open with its probes taken) is skipped without spending the
        attempt; the loop ends because each refusal removes one instance from the choice."""
        while True:
            picked: list[Instance] = []
            try:
                return await self._call_one(request, attempt, route, key, picked)
            except CircuitOpen:
                route.refused.add(picked[-1].id)
            except NoInstance:
                if self.user_resolver.instances:
                    raise AllCircuitsOpen(
                        self.users.service, self.breakers.retry_after()
                    ) from None
                raise

    async def _call_one(
        self,
        request: user_pb2.GetUserRequest,
        attempt: Attempt,
        route: _Route,
        key: bytes | None,
        picked: list[Instance],
    ) -> user_pb2.GetUserResponse:
        """GetUser on one balanced instance (appended to `picked`) through its breaker:
        `CircuitOpen` if the breaker refuses. Outcomes that prove the call was not executed
        give the breaker's permit back without counting."""

        def on_pick(inst: Instance) -> None:
            picked.append(inst)
            route.tried.add(inst.id)
            route.last = inst.id

        async def call(channel: grpc.aio.Channel) -> user_pb2.GetUserResponse:
            breaker = self.breakers.get(picked[-1].id)
            stub = user_pb2_grpc.UserServiceStub(channel)
            if breaker is None:
                return await stub.GetUser(request, timeout=attempt.timeout)
            permit = breaker.acquire()
            if permit is None:
                raise breaker.reject()
            try:
                response = await stub.GetUser(request, timeout=attempt.timeout)
            except Exception as e:
                failure = classify(e)
                if failure is not None and failure.not_executed:
                    permit.release()
                else:
                    permit.record(not counts_against_instance(e))
                raise
            except BaseException:
                permit.release()
                raise
            permit.record(True)
            return response

        return await self.call_users(call, key=key, on_pick=on_pick)

    async def chat(self, content: str) -> chat_pb2.Message:
        """One message through a chat instance's SyncStream, within the current deadline
        (tightened to `deadline_ms`); its one answer. Raises `grpc.aio.AioRpcError`,
        `NoInstance` or `EmptyStream`."""

        async def call(channel: grpc.aio.Channel) -> chat_pb2.Message:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            stream = stub.SyncStream(None)  # the deadline interceptor bounds it
            try:
                # a call that already ended (instance gone): read() below raises its status
                with contextlib.suppress(asyncio.InvalidStateError):
                    await stream.write(chat_pb2.Message(content=content, timestamp=now_ms()))
                    await stream.done_writing()
                reply = await stream.read()
                if not isinstance(reply, chat_pb2.Message):
                    raise EmptyStream("the chat stream ended without an answer")
                await stream.code()  # the server ends the stream after our half-close
                return reply
            finally:
                stream.cancel()

        with deadline_scope(Deadline.from_timeout(self.deadline)):
            return await self.call_chats(call)

    # ------------------------------------------------------------------ HTTP

    def _json(
        self, doc: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.responses[status] += 1
        return web.json_response(doc, status=status, headers=headers)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return self._json({"error": message, "code": code}, status)

    def _upstream_error(
        self, e: grpc.aio.AioRpcError | NoInstance | EmptyStream | DeadlineExceeded
    ) -> web.Response:
        if isinstance(e, AllCircuitsOpen):
            self.fallbacks += 1
            return self._json(
                {"error": str(e), "code": "UNAVAILABLE", "fallback": True,
                 "retry_after_ms": round(e.retry_after * 1000)},
                503, _retry_after_header(e.retry_after),
            )
        if isinstance(e, NoInstance):
            return self._error(503, "NO_INSTANCE", str(e))
        if isinstance(e, EmptyStream):
            return self._error(502, "EMPTY_STREAM", str(e))
        if isinstance(e, DeadlineExceeded):
            return self._error(504, "DEADLINE_EXCEEDED", str(e))
        code = e.code()
        return self._error(HTTP_STATUS.get(code, 502), code.name, e.details() or code.name)

    def request_deadline(self, request: web.Request) -> Deadline | None:
        """The deadline a request asks for in its timeout headers (the earliest), None without
        one; ValueError for a malformed one. `deadline_ms` caps it where it is applied."""
        return earliest(*(
            deadline_from_header(request.headers[h]) for h in TIMEOUT_HEADERS
            if h in request.headers
        ))

    def _limited(
        self, route: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def limited(request: web.Request) -> web.StreamResponse:
            wait = self.http_limiter.admit(route)
            if wait is None:
                return await handler(request)
            self.rate_limited[route] += 1
            return self._json(
                {"error": f"rate limit exceeded on {route}", "code": "RESOURCE_EXHAUSTED",
                 "retry_after_ms": math.ceil(wait * 1000)},
                429, _retry_after_header(wait),
            )

        return limited

    async def handle_user(self, request: web.Request) -> web.Response:
        raw = request.match_info.get("id") or request.query.get("id") or "1"
        try:
            uid = int(raw)
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", f"id {raw!r} is not an integer")
        try:
            deadline = self.request_deadline(request)
        except ValueError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        route_key = request.headers.get(ROUTE_KEY_HEADER) or request.query.get("key") or str(uid)
        try:
            with deadline_scope(deadline):
                user = await self.get_user(str(uid), key=route_key.encode())
        except (grpc.aio.AioRpcError, NoInstance, DeadlineExceeded) as e:
            return self._upstream_error(e)
        return self._json(
            {"id": uid, "name": user.name, "age": user.age, "served_by": user.served_by}
        )

    async def handle_chat(self, request: web.Request) -> web.Response:
        try:
            deadline = self.request_deadline(request)
        except ValueError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        try:
            doc = await request.json()
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", "the body is not JSON")
        content = doc.get("content") if isinstance(doc, dict) else None
        if not isinstance(content, str):
            return self._error(400, "INVALID_ARGUMENT", 'expected {"content": "..."}')
        try:
            with deadline_scope(deadline):
                reply = await self.chat(content)
        except (grpc.aio.AioRpcError, NoInstance, EmptyStream) as e:
            return self._upstream_error(e)
        return self._json(
            {"content": reply.content, "timestamp": reply.timestamp, "served_by": reply.served_by}
        )

    def stats(self) -> dict[str, Any]:
        w = self.watcher
        return {
            "gateway": self.instance_id,
            "service": self.users.service,
            "policy": self.users.policy,
            "deadline_ms": round(self.deadline * 1000),
            "instances": [_instance_json(i) for i in self.user_resolver.instances],
            "served": dict(sorted(self.users.served.items())),
            "outstanding": dict(sorted(self.users.outstanding.items())),
            "ejected": sorted(self.users.outlier.ejected()),
            "stale_for": _finite(self.user_resolver.stale_for()),
            "revision": self.user_resolver.revision,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "breakers": self.breakers.to_json(),
            "rate_limited": dict(sorted(self.rate_limited.items())),
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "config": {
                "service": self.settings.config_service,
                "revision": w.revision if w is not None else 0,
                "seen_revision": w.seen_revision if w is not None else 0,
                "last_error": w.last_error if w is not None else None,
                "settings": dataclasses.asdict(self.config),
            },
            "chat": {
                "service": self.chats.service,
                "instances": [_instance_json(i) for i in self.chat_resolver.instances],
                "served": dict(sorted(self.chats.served.items())),
                "stale_for": _finite(self.chat_resolver.stale_for()),
            },
        }

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def handle_policy(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            name = doc.get("policy") if isinstance(doc, dict) else None
            if not isinstance(name, str):
                raise InvalidArgument('expected {"policy": NAME}')
            self.set_policy(name)
        except (ValueError, InvalidArgument) as e:
            return web.json_response(
                {"error": str(e), "code": "INVALID_ARGUMENT", "policies": sorted(POLICIES)},
                status=400,
            )
        return web.json_response({"policy": self.users.policy})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        n = len(self.user_resolver.instances)
        return web.json_response({"user_instances": n}, status=200 if n else 503)


def build(settings: ServiceSettings, gateway: GatewaySettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, http=True, register="http")
    gw = Gateway(rt.client, gateway, instance_id=settings.id)
    assert rt.http_app is not None
    gw.add_routes(rt.http_app)
    rt.on_start(gw.start)
    rt.on_stop(gw.stop)
    return rt


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    p = service_parser("gateway", "HTTP/JSON gateway balancing over the user instances.")
    p.add_argument("--policy", default="weighted_round_robin", choices=sorted(POLICIES),
                   help="balancing policy until the config center sets balancer.policy")
    p.add_argument("--user-service", default="user", help="service name of the user instances")
    p.add_argument("--chat-service", default="chat", help="service name of the chat instances")
    p.add_argument("--deadline-ms", type=int, default=1000,
                   help="deadline of one request, retries included (config: deadline_ms)")
    p.add_argument("--attempts", type=int, default=3,
                   help="attempts one request may make (config: retry.attempts)")
    p.add_argument("--config-service", default=None,
                   help="follow the config center's settings of this service (default: the "
                        "--service name); '-' for none")
    p.add_argument("--upstream-token", default=None,
                   help="bearer token sent on every upstream gRPC call (default: the first of "
                        "$RAFTREG_SERVICE_TOKEN; none: no token)")
    p.add_argument("--connect-timeout-ms", type=int, default=2000,
                   help="connect timeout of the upstream channels")
    ns = p.parse_args(argv)
    settings = settings_from_args(ns, env)
    upstream = ns.upstream_token or next(iter(tokens_from([], env)), None)
    config_service = ns.config_service or settings.service
    gw = GatewaySettings(
        user_service=ns.user_service, chat_service=ns.chat_service, policy=ns.policy,
        deadline=ns.deadline_ms / 1000, attempts=ns.attempts,
        config_service=None if config_service == "-" else config_service,
        channel=ChannelSettings(
            token=upstream, connect_timeout_s=ns.connect_timeout_ms / 1000,
            rpc_log_level=settings.rpc_log_level,
        ),
    )
    return run_service(settings, lambda s: build(s, gw))


if __name__ == "__main__":
    sys.exit(main())
