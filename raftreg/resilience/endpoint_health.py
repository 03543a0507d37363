"""Endpoint availability from consecutive failures: the reference document's adaptive-timeout
flow (request -> timeout -> backoff retry -> retries >= threshold -> mark the node unavailable).

Contracts (per endpoint, any hashable key such as "host:port"):
- `failure_threshold` consecutive failures mark the endpoint unavailable for `cooldown_s`;
  any success resets the count.
- After the cool-down the endpoint is available again *on probation*: its next outcome decides,
  one failure marks it unavailable again at once, a success clears it.
- `is_available` of an endpoint never seen is True. State is per instance; one event loop.

Typical use with `retry_call`: each attempt picks `health.available(endpoints)[0]` and records
its outcome there, so a node that keeps failing is skipped for the cool-down.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from raftreg.resilience.clock import MONOTONIC, Clock


@dataclass(slots=True)
class _State:
    failures: int = 0
    down_until: float | None = None
    probation: bool = False


class EndpointHealth:
    """Consecutive-failure tracking with a cool-down per endpoint."""

    def __init__(
        self, *, failure_threshold: int = 3, cooldown_s: float = 30.0, clock: Clock = MONOTONIC
    ) -> None:
        self._clock = clock
        self._states: dict[Hashable, _State] = {}
        self.failure_threshold = 1
        self.cooldown_s = 0.0
        self.configure(failure_threshold=failure_threshold, cooldown_s=cooldown_s)

    def configure(
        self, *, failure_threshold: int | None = None, cooldown_s: float | None = None
    ) -> None:
        """Change the thresholds live; endpoints already marked keep their cool-down end."""
        if failure_threshold is not None:
            if failure_threshold < 1:
                raise ValueError("failure_threshold must be >= 1")
            self.failure_threshold = failure_threshold
        if cooldown_s is not None:
            if not cooldown_s >= 0:
                raise ValueError("cooldown_s must be >= 0")
            self.cooldown_s = cooldown_s

    def _state(self, endpoint: Hashable) -> _State:
        st = self._states.get(endpoint)
        if st is None:
            st = self._states[endpoint] = _State()
        if st.down_until is not None and self._clock.now() >= st.down_until:
            st.down_until = None
            st.failures = 0
            st.probation = True
        return st

    def is_available(self, endpoint: Hashable) -> bool:
        if endpoint not in self._states:
            return True
        return self._state(endpoint).down_until is None

    def unavailable_for(self, endpoint: Hashable) -> float:
        """Seconds until the endpoint's cool-down ends (0 when available)."""
        if endpoint not in self._states:
            return 0.0
        until = self._state(endpoint).down_until
        return 0.0 if until is None else until - self._clock.now()

    def available(self, endpoints: Iterable[Hashable]) -> list[Hashable]:
        """The available ones among `endpoints`, in the given order."""
        return [ep for ep in endpoints if self.is_available(ep)]

    def record_success(self, endpoint: Hashable) -> None:
        self._states.pop(endpoint, None)

    def record_failure(self, endpoint: Hashable) -> None:
        st = self._state(endpoint)
        if st.down_until is not None:
            return
        st.failures += 1
        if st.probation or st.failures >= self.failure_threshold:
            st.down_until = self._clock.now() + self.cooldown_s
            st.probation = False
