"""The gateway's settings: the live ones it takes from the config center (`GatewayConfig` and
its sections `RateLimitConfig`, `BreakerConfig`, `BalancerConfig`, `RetryConfig`,
`OutlierConfig`, each validating its values in `__post_init__`), how they are parsed over the
command line's defaults (`config_parser`) and logged when they change (`config_changes`), and
the fixed ones it starts with (`GatewaySettings`). The settings, their defaults and their
meaning are the table in docs/gateway.md ("Live settings"). Nothing here does I/O; the other
modules of the package import this one, and it imports none of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from raftreg.configcenter import dataclass_parser
from raftreg.discovery import POLICIES, OutlierDetector
from raftreg.resilience import Backoff, BreakerSettings, RetryPolicy
from services.runtime import ChannelSettings

API_ROUTES = ("/user", "/chat")


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
    """GetUser retries (see docs/gateway.md, "Resilience of the upstream calls")."""

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
    """The gateway's live settings (the table in docs/gateway.md)."""

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
