"""The gateway's circuit breakers: one `CircuitBreaker` per live `user` instance
(`InstanceBreakers`, over `raftreg.resilience.BreakerGroup`), and which failed calls count
against an instance (`counts_against_instance`). Beyond the group: the breakers follow the
resolver's instances (a new instance gets a closed breaker at once, a gone one's breaker is
dropped), `breaker.enabled` turns them all off and on live, and it keeps what `/stats` shows
(`to_json`, `opened`) and what the balancer and the fallback need (`open_ids`, `retry_after`).
State changes are logged on the "services.gateway" logger. Imports `config` only.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from raftreg.resilience import (
    FAILURE_CODES,
    MONOTONIC,
    BreakerGroup,
    BreakerState,
    CircuitBreaker,
    Clock,
    classify,
)
from services.gateway.config import BreakerConfig

# One logger for the whole gateway package: its log lines keep the name they always had.
log = logging.getLogger("services.gateway")


def counts_against_instance(exc: BaseException) -> bool:
    """Whether a failed call says the instance is unhealthy: a status in the breakers'
    `FAILURE_CODES` that does not prove the request was refused unexecuted, or an exception
    that is not a call status at all."""
    failure = classify(exc)
    return failure is None or (failure.code in FAILURE_CODES and not failure.not_executed)


class InstanceBreakers:
    """One `CircuitBreaker` per instance id of one service, all with the same settings (a
    `BreakerGroup` keyed by instance id); `track` follows the live instances (new ones get a
    closed breaker, gone ones are dropped), `configure` applies new settings to all of them
    live. Disabled: no breakers."""

    def __init__(self, service: str, config: BreakerConfig, *, clock: Clock = MONOTONIC) -> None:
        self.service = service
        self._config = config
        self._clock = clock
        self._group: BreakerGroup | None = self._new_group() if config.enabled else None
        self._ids: tuple[str, ...] = ()
        self.opened: collections.Counter[str] = collections.Counter()

    @property
    def enabled(self) -> bool:
        return self._group is not None

    def _new_group(self) -> BreakerGroup:
        return BreakerGroup(self._config.settings(), clock=self._clock,
                            on_state_change=self._changed, is_failure=counts_against_instance)

    def _changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            self.opened[breaker.name] += 1
        log.log(
            logging.WARNING if new is BreakerState.OPEN else logging.INFO,
            "breaker %s/%s: %s -> %s", self.service, breaker.name, old.value, new.value,
        )

    @property
    def _breakers(self) -> dict[str, CircuitBreaker]:
        return {} if self._group is None else {b.name: b for b in self._group}

    def track(self, instance_ids: Sequence[str]) -> None:
        self._ids = tuple(instance_ids)
        if self._group is not None:
            self._group.retain(self._ids)

    def configure(self, config: BreakerConfig) -> None:
        old, self._config = self._config, config
        if not config.enabled:
            self._group = None
        elif self._group is None:
            self._group = self._new_group()
            self._group.retain(self._ids)
        elif config.settings() != old.settings():
            self._group.configure(**dataclasses.asdict(config.settings()))

    def get(self, instance_id: str) -> CircuitBreaker | None:
        """The breaker of `instance_id` (None when disabled); made on demand for an instance
        not tracked yet."""
        return None if self._group is None else self._group.get(instance_id)

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
