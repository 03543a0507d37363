"""The example API gateway: HTTP/JSON in front of the `user` (and `chat`) instances it
discovers in the registry, balancing every call across them on the client side, with live
settings from the config center, a rate limit, circuit breakers, deadlines and retries.
How to run it, its flags, endpoints, settings and behaviour: docs/gateway.md.

This package owns the gateway process (`python -m services.gateway`, `__main__`). Modules, each
with its contract in its docstring; imports point one way, config <- breakers, ratelimit <-
upstream <- handlers <- app <- `__main__`, and no module imports this package's `__init__`:
- `config`: the live settings (`GatewayConfig` and its sections), their parser and change
  log, and the fixed `GatewaySettings`.
- `breakers`: one circuit breaker per `user` instance (`InstanceBreakers`).
- `ratelimit`: the token buckets of the API routes (`HttpRateLimiter`).
- `upstream`: the calls to the `user` and `chat` instances: balancing, deadlines, retries,
  breakers (`Upstream`, `GuardedBalancer`).
- `handlers`: `Gateway`, the HTTP routes and handlers, `/stats` and the live config.
- `app`: the command line and the service process (`main`, `build`).

Re-exported here: the public names of the former module `services/gateway.py`, and `Upstream`.
"""

from __future__ import annotations

from services.gateway.app import build, main
from services.gateway.breakers import InstanceBreakers, counts_against_instance
from services.gateway.config import (
    API_ROUTES,
    BalancerConfig,
    BreakerConfig,
    GatewayConfig,
    GatewaySettings,
    OutlierConfig,
    RateLimitConfig,
    RetryConfig,
    config_changes,
    config_parser,
)
from services.gateway.handlers import (
    HTTP_STATUS,
    ROUTE_KEY_HEADER,
    TIMEOUT_HEADERS,
    Gateway,
)
from services.gateway.ratelimit import HttpRateLimiter
from services.gateway.upstream import AllCircuitsOpen, EmptyStream, GuardedBalancer, Upstream

__all__ = [
    "API_ROUTES",
    "HTTP_STATUS",
    "ROUTE_KEY_HEADER",
    "TIMEOUT_HEADERS",
    "AllCircuitsOpen",
    "BalancerConfig",
    "BreakerConfig",
    "EmptyStream",
    "Gateway",
    "GatewayConfig",
    "GatewaySettings",
    "GuardedBalancer",
    "HttpRateLimiter",
    "InstanceBreakers",
    "OutlierConfig",
    "RateLimitConfig",
    "RetryConfig",
    "Upstream",
    "build",
    "config_changes",
    "config_parser",
    "counts_against_instance",
    "main",
]
