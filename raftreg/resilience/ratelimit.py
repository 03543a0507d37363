"""Token-bucket rate limiting, per bucket and keyed by (service, method).

Contracts of `TokenBucket(rate_per_s, burst)`:
- It starts full; tokens refill continuously at `rate_per_s` up to `burst`. Over any interval
  of length t from creation, at most `burst + rate_per_s * t` tokens are handed out
  (reconfiguration aside).
- `try_acquire(n)` takes `n` tokens now or none. `acquire(n)` reserves them at once and waits
  until the debt is repaid (callers are served in arrival order; while anyone waits,
  `try_acquire` fails); with `timeout` it gives up at once (taking nothing) if the wait would be
  longer, and a cancelled waiter gives its tokens back. Asking for more than `burst` fails.
- `configure(rate, burst)` applies from now: tokens earned so far are kept, capped at the new
  burst.

`RateLimiter` holds one bucket per (service, method) (created on first use). The limit of a
method is its override `"pkg.Service/Method"`, else its service's override `"pkg.Service"`,
else the default; None means unlimited. `configure(default, overrides)` replaces the whole
table live; buckets that stay limited keep their tokens. Not thread-safe: one event loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from raftreg.errors import ResourceExhausted
from raftreg.resilience.clock import MONOTONIC, Clock
from raftreg.resilience.rpc import split_method


class RateLimited(ResourceExhausted):
    """A rate limit refused the call; nothing was sent."""

    not_executed = True


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate_per_s` tokens per second, at most `burst` at once."""

    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        _check(self.rate_per_s, self.burst)


def _check(rate_per_s: float, burst: float) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError("rate_per_s must be a positive number")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ValueError("burst must be >= 1")


class TokenBucket:
    """A token bucket (see the module docstring)."""

    def __init__(self, rate_per_s: float, burst: float, *, clock: Clock = MONOTONIC) -> None:
        _check(rate_per_s, burst)
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock.now()

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while waiters are repaying a reservation)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.now()
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def configure(self, rate_per_s: float | None = None, burst: float | None = None) -> None:
        rate = self._rate if rate_per_s is None else rate_per_s
        new_burst = self._burst if burst is None else burst
        _check(rate, new_burst)
        self._refill()
        self._rate, self._burst = rate, new_burst
        self._tokens = min(self._tokens, new_burst)

    def try_acquire(self, n: float = 1) -> bool:
        """Take `n` tokens if they are there now."""
        if not n > 0:
            raise ValueError("n must be > 0")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def acquire(self, n: float = 1, *, timeout: float | None = None) -> bool:
        """Take `n` tokens, waiting for them; False (nothing taken) if `n > burst` or the wait
        would exceed `timeout`."""
        if not n > 0:
            raise ValueError("n must be > 0")
        if n > self._burst:
            return False
        self._refill()
        wait = max(0.0, (n - self._tokens) / self._rate)
        if timeout is not None and wait > timeout:
            return False
        self._tokens -= n
        if wait <= 0:
            return True
        try:
            await self._clock.sleep(wait)
        except BaseException:
            self._refill()
            self._tokens = min(self._burst, self._tokens + n)
            raise
        return True


class RateLimiter:
    """Token buckets per (service, method) with a default and overrides (module docstring)."""

    def __init__(
        self,
        default: RateLimit | None = None,
        overrides: Mapping[str, RateLimit | None] | None = None,
        *,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._clock = clock
        self._default: RateLimit | None = None
        self._overrides: dict[str, RateLimit | None] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.configure(default, overrides)

    @staticmethod
    def _key(name: str) -> str:
        return name.lstrip("/")

    def configure(
        self, default: RateLimit | None, overrides: Mapping[str, RateLimit | None] | None = None
    ) -> None:
        """Replace the whole table (default and overrides) live."""
        self._default = default
        self._overrides = {self._key(k): v for k, v in (overrides or {}).items()}
        for key, bucket in list(self._buckets.items()):
            limit = self.limit_for(*key)
            if limit is None:
                del self._buckets[key]
            else:
                bucket.configure(limit.rate_per_s, limit.burst)

    def limit_for(self, service: str, method: str) -> RateLimit | None:
        for key in (f"{service}/{method}", service):
            if key in self._overrides:
                return self._overrides[key]
        return self._default

    def bucket(self, full_method: str) -> TokenBucket | None:
        """The bucket of a full method name ("/pkg.Service/Method"), None if unlimited."""
        key = split_method(full_method)
        limit = self.limit_for(*key)
        if limit is None:
            return None
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(limit.rate_per_s, limit.burst, clock=self._clock)
        return b

    def try_acquire(self, full_method: str, n: float = 1) -> bool:
        b = self.bucket(full_method)
        return b is None or b.try_acquire(n)

    async def acquire(
        self, full_method: str, n: float = 1, *, timeout: float | None = None
    ) -> bool:
        b = self.bucket(full_method)
        return b is None or await b.acquire(n, timeout=timeout)
