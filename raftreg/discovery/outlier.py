"""Passive outlier detection: eject an instance that keeps failing, bring it back after a cool-down.

Contracts (after Envoy's consecutive-failure detection):
- `consecutive_failures` failed calls in a row eject the instance for
  `base_ejection_s x (number of times it has been ejected)`, capped at `max_ejection_s`.
  A success resets the run of failures; an instance that stays healthy for a whole
  `max_ejection_s` after coming back has its ejection count forgotten.
- At most `max_ejected_fraction` of the known instances (and never all of them) are ejected at
  once: with too few healthy instances left, failing ones stay in rotation.
- Times come from `clock` (monotonic seconds), so tests can drive it by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Health:
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    back_at: float = 0.0


class OutlierDetector:
    def __init__(
        self,
        *,
        consecutive_failures: int = 5,
        base_ejection_s: float = 10.0,
        max_ejection_s: float = 60.0,
        max_ejected_fraction: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.max_ejected_fraction = max_ejected_fraction
        self._clock = clock
        self._health: dict[str, _Health] = {}
        self.ejections_total = 0

    def track(self, instance_ids: Iterable[str]) -> None:
        """The instances that exist now; state of the others is dropped."""
        ids = set(instance_ids)
        self._health = {i: self._health.get(i) or _Health() for i in ids}

    def ejected(self) -> frozenset[str]:
        """Ids ejected right now."""
        now = self._clock()
        return frozenset(i for i, h in self._health.items() if h.ejected_until > now)

    def is_ejected(self, instance_id: str) -> bool:
        h = self._health.get(instance_id)
        return h is not None and h.ejected_until > self._clock()

    def record(self, instance_id: str, ok: bool) -> None:
        """The outcome of one call to `instance_id`."""
        h = self._health.get(instance_id)
        if h is None:
            return
        now = self._clock()
        if ok:
            h.failures = 0
            if h.ejections and h.ejected_until <= now and now - h.back_at >= self.max_ejection_s:
                h.ejections = 0
            return
        h.failures += 1
        if h.failures < self.consecutive_failures or h.ejected_until > now:
            return
        ejected = len(self.ejected())
        cap = min(len(self._health) - 1, int(len(self._health) * self.max_ejected_fraction))
        if ejected >= cap:
            return
        h.ejections += 1
        h.failures = 0
        period = min(self.max_ejection_s, self.base_ejection_s * h.ejections)
        h.ejected_until = now + period
        h.back_at = h.ejected_until
        self.ejections_total += 1
