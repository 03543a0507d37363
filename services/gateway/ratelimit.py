"""The gateway's HTTP rate limit (`HttpRateLimiter`): token buckets over the API routes, one
shared by all of them and one per limited route, reconfigured live from `RateLimitConfig`.
It only decides whether a request may go now and, if not, how long until it could; answering
429 is the handlers' job. Imports `config` only.
"""

from __future__ import annotations

from raftreg.resilience import MONOTONIC, Clock, TokenBucket
from services.gateway.config import RateLimitConfig


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
