"""Clocks for the client's timers (lease keepalive scheduling, the in-memory client's leases).

`LoopClock` is the real one (the running loop's monotonic clock). `ManualClock` only moves when a
test calls `advance()`; sleepers whose deadline has been reached are woken by that call, so
time-dependent behaviour can be tested fast and deterministically. `SteppingClock` moves only
when something sleeps on it, by exactly the time slept: a retry loop's budget is then spent by
its pauses alone, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds plus a matching sleep."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None:
        """Return once `now()` has advanced by `seconds` (at least one loop iteration)."""
        ...


class LoopClock:
    """The running event loop's clock (`loop.time()`, monotonic)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock that moves only through `advance()`. Not thread-safe; use it on one loop.

    `sleep(d)` waits until `advance()` has moved the clock to at least `now() + d` (a
    non-positive `d` yields once). Cancelling a sleeper is fine."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has been reached (they
        run at the loop's next iterations)."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones included until their deadline)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())


class SteppingClock:
    """A clock that moves only when something sleeps on it: `sleep(d)` advances it by `d` at
    once and yields. For code whose only waits are its own pauses (a retry loop): its budget is
    then spent by those pauses alone, exactly and instantly. Use it on one loop."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)
