"""Exponential backoff delays.

`Backoff.delay(n)` is the wait before retry `n` (n >= 1): the *cap* `min(max_delay, base *
multiplier**(n-1))`, then jitter:
- "none": the cap itself (deterministic; tests use it to see the growth);
- "full": uniform in [0, cap] (AWS "full jitter": best at spreading synchronized clients);
- "equal": cap/2 + uniform in [0, cap/2] (never shorter than half the cap).
So every delay lies in [0, max_delay], and for "none"/"equal" the lower bound grows with n.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff settings; `rng` makes the jitter reproducible in tests."""

    base: float = 0.05
    multiplier: float = 2.0
    max_delay: float = 2.0
    jitter: Jitter = "full"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base >= 0:
            raise ValueError("base must be >= 0")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be >= 1")
        if not self.max_delay >= 0:
            raise ValueError("max_delay must be >= 0")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")

    def cap(self, n: int) -> float:
        """The delay before retry `n` without jitter."""
        if n < 1:
            raise ValueError("retry numbers start at 1")
        try:
            raw = self.base * self.multiplier ** (n - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, raw)

    def delay(self, n: int) -> float:
        """The delay before retry `n` (>= 1), jitter applied."""
        cap = self.cap(n)
        if self.jitter == "full":
            return self.rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return cap / 2 + self.rng.uniform(0.0, cap / 2)
        return cap

    def __iter__(self) -> Iterator[float]:
        """The delays before retries 1, 2, 3, ... (endless)."""
        n = 1
        while True:
            yield self.delay(n)
            n += 1
