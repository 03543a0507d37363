"""Circuit breakers: the reference document's state table, on a sliding time window.

| state     | calls                                | leaves when                                 |
|-----------|--------------------------------------|---------------------------------------------|
| closed    | all pass; outcomes are recorded      | failure rate >= `failure_rate` over the     |
|           |                                      | window with >= `min_calls` outcomes in it,  |
|           |                                      | held for `sustain_s` (0: at once) -> open   |
| open      | all rejected (`CircuitOpen`)         | `open_for_s` elapsed -> half-open           |
| half-open | at most `half_open_probes` probes    | a probe fails -> open (the wait starts      |
|           | pass (a cancelled one frees its slot)| over); all `half_open_probes` succeed ->    |
|           |                                      | closed                                      |

The window holds the outcomes of the last `window_s` seconds in `buckets` buckets: an outcome
counts for between `window_s - window_s/buckets` and `window_s` seconds, and recording costs
O(1) (amortized over the buckets that time skipped, at most `buckets` per call). The table's
"error rate >= 50% sustained 10 s" is read as "measured over a 10 s window"; set `sustain_s`
to additionally require the rate to stay above the threshold that long.

Outcomes: `allow()`/`record(success)` act on the current state (an outcome recorded while open
is ignored; in half-open one in-flight probe is settled). `acquire()` returns a `Permit` whose
outcome is ignored if the breaker changed state since it was issued, and which can be released
without an outcome; `call()` uses permits. Use one style per breaker. Every threshold can be
changed live with `configure()` (a changed window resets the window's counts). Not
thread-safe: one event loop.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from raftreg.errors import Unavailable
from raftreg.resilience.clock import MONOTONIC, Clock
from raftreg.resilience.rpc import classify

T = TypeVar("T")
log = logging.getLogger(__name__)

FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def default_is_failure(exc: BaseException) -> bool:
    """Whether an exception counts against the callee: status errors whose code is in
    `FAILURE_CODES` (the callee is broken or overloaded; NOT_FOUND and the like are answers),
    and every exception that is not a status error at all (connection errors, bugs)."""
    failure = classify(exc)
    return failure is None or failure.code in FAILURE_CODES


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Unavailable):
    """The breaker rejected the call; nothing was sent. `retry_after` is the time (s) until it
    lets probes through."""

    not_executed = True

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open (retry in {retry_after:.1f}s)")
        self.name = name
        self.retry_after = retry_after


@dataclass(frozen=True)
class BreakerSettings:
    """A breaker's thresholds (see the module docstring)."""

    failure_rate: float = 0.5
    window_s: float = 10.0
    min_calls: int = 20
    open_for_s: float = 30.0
    half_open_probes: int = 3
    sustain_s: float = 0.0
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError("window_s must be > 0")
        if self.min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        if not self.open_for_s >= 0:
            raise ValueError("open_for_s must be >= 0")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be >= 1")
        if not self.sustain_s >= 0:
            raise ValueError("sustain_s must be >= 0")
        if self.buckets < 1:
            raise ValueError("buckets must be >= 1")


class _Window:
    """Success/failure counts over the last `window_s` seconds, in `buckets` time buckets.
    Slot `i % n` holds absolute bucket `i`; after `_advance(now)` the slots hold the buckets
    `head - n + 1 .. head` and the totals are their sums."""

    def __init__(self, window_s: float, buckets: int) -> None:
        self._width = window_s / buckets
        self._n = buckets
        self._ok = [0] * buckets
        self._bad = [0] * buckets
        self._head: int | None = None
        self.ok = 0
        self.bad = 0

    def _advance(self, now: float) -> None:
        cur = math.floor(now / self._width)
        if self._head is None:
            self._head = cur
            return
        if cur <= self._head:
            return
        if cur - self._head >= self._n:
            self._ok = [0] * self._n
            self._bad = [0] * self._n
            self.ok = self.bad = 0
        else:
            for i in range(self._head + 1, cur + 1):
                slot = i % self._n
                self.ok -= self._ok[slot]
                self.bad -= self._bad[slot]
                self._ok[slot] = self._bad[slot] = 0
        self._head = cur

    def add(self, now: float, success: bool) -> None:
        self._advance(now)
        slot = math.floor(now / self._width) % self._n
        if success:
            self._ok[slot] += 1
            self.ok += 1
        else:
            self._bad[slot] += 1
            self.bad += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) in the window ending now."""
        self._advance(now)
        return self.ok, self.bad


StateListener = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class Permit:
    """The right to make one call through a breaker; settle it once with `record` or
    `release` (later calls are no-ops)."""

    __slots__ = ("_breaker", "_generation", "_probe", "_settled")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._probe = probe
        self._settled = False

    def record(self, success: bool) -> None:
        """The call's outcome; ignored if the breaker changed state since the permit."""
        if self._settled:
            return
        self._settled = True
        if self._breaker._current_generation() == self._generation:
            self._breaker.record(success)

    def release(self) -> None:
        """Give the permit back without an outcome (e.g. the call was cancelled)."""
        if self._settled:
            return
        self._settled = True
        if self._probe and self._breaker._current_generation() == self._generation:
            self._breaker._probes_in_flight -= 1


class CircuitBreaker:
    """One circuit breaker (see the module docstring for the states and contracts)."""

    def __init__(
        self,
        name: str,
        *,
        failure_rate: float = 0.5,
        window_s: float = 10.0,
        min_calls: int = 20,
        open_for_s: float = 30.0,
        half_open_probes: int = 3,
        sustain_s: float = 0.0,
        buckets: int = 10,
        clock: Clock = MONOTONIC,
        on_state_change: StateListener | None = None,
        is_failure: Callable[[BaseException], bool] = default_is_failure,
    ) -> None:
        self.name = name
        self._settings = BreakerSettings(
            failure_rate=failure_rate,
            window_s=window_s,
            min_calls=min_calls,
            open_for_s=open_for_s,
            half_open_probes=half_open_probes,
            sustain_s=sustain_s,
            buckets=buckets,
        )
        self._clock = clock
        self._listener = on_state_change
        self.is_failure = is_failure
        self._window = _Window(window_s, buckets)
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._over_since: float | None = None
        self._probes_in_flight = 0
        self._probe_successes = 0

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Clock = MONOTONIC,
        on_state_change: StateListener | None = None,
        is_failure: Callable[[BaseException], bool] = default_is_failure,
    ) -> CircuitBreaker:
        return cls(
            name,
            **dataclasses.asdict(settings),
            clock=clock,
            on_state_change=on_state_change,
            is_failure=is_failure,
        )

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    def configure(self, **changes: Any) -> None:
        """Change thresholds live (names as in `BreakerSettings`; unknown names raise
        TypeError, invalid values ValueError and change nothing)."""
        new = dataclasses.replace(self._settings, **changes)
        if (new.window_s, new.buckets) != (self._settings.window_s, self._settings.buckets):
            self._window = _Window(new.window_s, new.buckets)
            self._over_since = None
        self._settings = new

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose wait is over reads as half-open)."""
        self._refresh()
        return self._state

    def _refresh(self) -> None:
        """Apply a due open -> half-open move."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.now() >= self._opened_at + self._settings.open_for_s
        ):
            self._transition(BreakerState.HALF_OPEN)

    def _current_generation(self) -> int:
        self._refresh()
        return self._generation

    def retry_after(self) -> float:
        """Seconds until an open breaker lets probes through (0 otherwise)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._settings.open_for_s - self._clock.now())

    def counts(self) -> tuple[int, int]:
        """(successes, failures) in the current window (closed state)."""
        return self._window.counts(self._clock.now())

    def acquire(self) -> Permit | None:
        """A permit for one call, or None if the call must be rejected."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(self, self._generation, probe=False)
        if state is BreakerState.OPEN:
            return None
        if self._probes_in_flight + self._probe_successes >= self._settings.half_open_probes:
            return None
        self._probes_in_flight += 1
        return Permit(self, self._generation, probe=True)

    def allow(self) -> bool:
        """Whether a call may go now (in half-open this takes a probe slot; settle it with
        `record`)."""
        return self.acquire() is not None

    def record(self, success: bool) -> None:
        """The outcome of a call that was allowed."""
        state = self.state
        now = self._clock.now()
        if state is BreakerState.CLOSED:
            self._window.add(now, success)
            self._evaluate(now)
        elif state is BreakerState.HALF_OPEN:
            if self._probes_in_flight <= 0:
                return  # a late outcome of a call admitted before the breaker opened
            self._probes_in_flight -= 1
            if not success:
                self._trip(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self._settings.half_open_probes:
                self._transition(BreakerState.CLOSED)

    def reject(self) -> CircuitOpen:
        """The exception for a rejected call."""
        return CircuitOpen(self.name, self.retry_after())

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        fallback: Callable[[CircuitOpen], Awaitable[T]] | None = None,
    ) -> T:
        """`await fn()` through the breaker. When rejected: `await fallback(error)` if given,
        else raise `CircuitOpen`. Exceptions of `fn` propagate after being recorded (as
        failures if `is_failure` says so); cancellation records nothing."""
        permit = self.acquire()
        if permit is None:
            err = self.reject()
            if fallback is None:
                raise err
            return await fallback(err)
        try:
            result = await fn()
        except Exception as exc:
            permit.record(not self.is_failure(exc))
            raise
        except BaseException:
            permit.release()
            raise
        permit.record(True)
        return result

    def _evaluate(self, now: float) -> None:
        ok, bad = self._window.counts(now)
        total = ok + bad
        s = self._settings
        if total < s.min_calls or bad < s.failure_rate * total:
            self._over_since = None
            return
        if self._over_since is None:
            self._over_since = now
        if now - self._over_since >= s.sustain_s:
            self._trip(now)

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._over_since = None
        if new is BreakerState.CLOSED:
            s = self._settings
            self._window = _Window(s.window_s, s.buckets)
        if old is not new and self._listener is not None:
            try:
                self._listener(self, old, new)
            except Exception:
                log.exception("breaker %s: state listener failed", self.name)


class BreakerGroup:
    """Breakers by key (a target, or a full method name), created on first use with the
    group's settings; `configure` changes the settings of the group and of every breaker."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        clock: Clock = MONOTONIC,
        on_state_change: StateListener | None = None,
        is_failure: Callable[[BaseException], bool] = default_is_failure,
    ) -> None:
        self._settings = settings or BreakerSettings()
        self._clock = clock
        self._listener = on_state_change
        self._is_failure = is_failure
        self._breakers: dict[str, CircuitBreaker] = {}

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    def get(self, key: str) -> CircuitBreaker:
        b = self._breakers.get(key)
        if b is None:
            b = CircuitBreaker.from_settings(
                key,
                self._settings,
                clock=self._clock,
                on_state_change=self._listener,
                is_failure=self._is_failure,
            )
            self._breakers[key] = b
        return b

    def configure(self, **changes: Any) -> None:
        """Change the thresholds of the group and of every breaker in it, live."""
        self._settings = dataclasses.replace(self._settings, **changes)
        for b in self._breakers.values():
            b.configure(**changes)

    def retain(self, keys: Iterable[str]) -> None:
        """Keep exactly the breakers of `keys`: missing ones are made (closed), others dropped
        (e.g. one breaker per live instance, following a resolver)."""
        self._breakers = {k: self.get(k) for k in keys}

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)
