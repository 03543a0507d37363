"""Clocks for the resilience parts.

`Clock`, `LoopClock` and `ManualClock` are `raftreg.common.clock`'s (one clock abstraction in the
project). `MonotonicClock` adds a real clock that also works outside a running loop
(`time.monotonic()`, which is what asyncio's default loop clock reads), so breakers and limiters
can be queried from synchronous code; `MONOTONIC` is the shared stateless instance used as every
default here.
"""

from __future__ import annotations

import asyncio
import time

from raftreg.common.clock import Clock, LoopClock, ManualClock


class MonotonicClock:
    """`time.monotonic()` seconds; `sleep` is `asyncio.sleep`. Stateless."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


MONOTONIC: Clock = MonotonicClock()

__all__ = ["MONOTONIC", "Clock", "LoopClock", "ManualClock", "MonotonicClock"]
