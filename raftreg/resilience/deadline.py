"""Deadlines: absolute expiry instants and their propagation from one hop to the next.

Contracts:
- A `Deadline` is an absolute instant on a `Clock` (monotonic seconds). `remaining()` is never
  negative; `expired` is true from the instant on.
- The *current deadline* is a context variable: it follows the asyncio task (and the tasks it
  creates, which copy the context). The server deadline interceptor sets it from the incoming
  call (`context.time_remaining()`); an HTTP gateway sets it with `deadline_scope` (e.g. from a
  `grpc-timeout`-style header, `deadline_from_header`); the client deadline interceptor applies it
  to every outgoing call. `deadline_scope` only ever tightens: a nested scope cannot extend the
  deadline it runs under.
- An outgoing call's timeout is `min(own timeout, remaining of the current deadline - margin)`;
  the margin is subtracted from the propagated part only, so that a downstream hop gives up
  (and answers) before its caller does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

import grpc.aio

from raftreg.resilience.clock import MONOTONIC, Clock

_CURRENT: ContextVar[Deadline | None] = ContextVar("raftreg_resilience_deadline", default=None)


@dataclass(frozen=True, slots=True)
class Deadline:
    """The instant `expires_at` on `clock` after which the work is no longer wanted."""

    expires_at: float
    clock: Clock = field(default=MONOTONIC, compare=False, repr=False)

    @classmethod
    def from_timeout(cls, timeout_s: float, clock: Clock = MONOTONIC) -> Deadline:
        """The deadline `timeout_s` seconds from now (a non-positive timeout is already expired)."""
        if math.isnan(timeout_s):
            raise ValueError("timeout must be a number")
        return cls(clock.now() + timeout_s, clock)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - self.clock.now())

    @property
    def expired(self) -> bool:
        return self.clock.now() >= self.expires_at

    def timeout(self, margin_s: float = 0.0) -> float:
        """Seconds left minus `margin_s`, never negative (a timeout for a call made now)."""
        return max(0.0, self.remaining() - margin_s)

    def min(self, other: Deadline | None) -> Deadline:
        """The earlier of the two (`other` on another clock is compared by its remaining time)."""
        if other is None:
            return self
        if other.clock is not self.clock:
            other = Deadline(self.clock.now() + other.remaining(), self.clock)
        return other if other.expires_at < self.expires_at else self


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The earliest of the given deadlines (None entries mean "no deadline")."""
    out: Deadline | None = None
    for d in deadlines:
        if d is not None:
            out = d if out is None else out.min(d)
    return out


def current_deadline() -> Deadline | None:
    """The deadline of the work this task is doing, if any."""
    return _CURRENT.get()


def set_current_deadline(deadline: Deadline | None) -> Token[Deadline | None]:
    """Make `deadline` the current deadline as is (no tightening); undo with
    `reset_current_deadline(token)` in the same context. Prefer `deadline_scope`."""
    return _CURRENT.set(deadline)


def reset_current_deadline(token: Token[Deadline | None]) -> None:
    _CURRENT.reset(token)


@contextmanager
def deadline_scope(deadline: Deadline | None) -> Iterator[Deadline | None]:
    """Run the block under `min(current deadline, deadline)`; yields the effective deadline.
    Restores the previous current deadline on exit."""
    effective = earliest(_CURRENT.get(), deadline)
    token = _CURRENT.set(effective)
    try:
        yield effective
    finally:
        _CURRENT.reset(token)


def deadline_of_call(
    context: grpc.aio.ServicerContext[object, object], clock: Clock = MONOTONIC
) -> Deadline | None:
    """The deadline of an incoming grpc.aio call, or None if the caller set none.

    `clock` must be a real clock: gRPC reports the remaining time in real seconds."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return Deadline.from_timeout(remaining, clock)


def outgoing_timeout(
    timeout_s: float | None,
    *,
    deadline: Deadline | None,
    margin_s: float = 0.0,
) -> float | None:
    """The timeout for an outgoing call: `min(timeout_s, deadline.timeout(margin_s))`, or None
    when neither bounds it. 0.0 means the propagated deadline has (nearly) passed: do not call."""
    propagated = deadline.timeout(margin_s) if deadline is not None else None
    if timeout_s is None:
        return propagated
    if propagated is None:
        return max(0.0, timeout_s)
    return max(0.0, min(timeout_s, propagated))


_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float:
    """Seconds from a timeout header: gRPC's `grpc-timeout` syntax (`"250m"`, `"5S"`: 1-8 digits
    and one of H M S m u n) or plain decimal seconds (`"1.5"`). Raises ValueError otherwise."""
    value = value.strip()
    m = _GRPC_TIMEOUT.match(value)
    if m is not None:
        return int(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"not a timeout: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a timeout: {value!r}")
    return seconds


def deadline_from_header(
    value: str | None, *, clock: Clock = MONOTONIC, max_s: float | None = None
) -> Deadline | None:
    """The deadline an HTTP request asks for in a timeout header (see `parse_timeout`), capped at
    `max_s`; `max_s` alone when the header is absent; None when both are."""
    if value is None:
        return None if max_s is None else Deadline.from_timeout(max_s, clock)
    seconds = parse_timeout(value)
    if max_s is not None:
        seconds = min(seconds, max_s)
    return Deadline.from_timeout(seconds, clock)
