"""`SeqWindow`: hands out a client's write sequence numbers so that the server can always
deduplicate a retry.

The server remembers one client's results for the sequence numbers in
(max_seq - window, max_seq] (`raftreg.store.identity.ClientTable`) and refuses an unremembered
one at or below that floor as "request id too old". A write with seq `u` that is still
unfinished (in flight, or being retried) is safe as long as no seq `u + window` or higher can be
applied before it. So:

Invariant: a seq `s` is issued only when every unfinished seq `u` has `s <= u + window - 1`,
i.e. `next seq <= oldest unfinished seq + window - 1`. (A semaphore of `window` slots does not
keep it: one slow old write and `window` quick later ones would.)

Contracts:
- Seqs are issued 1, 2, 3, ... (from `first`), each exactly once, in the order of `acquire`
  calls: a caller that would break the invariant waits, first come first served (a later
  caller never overtakes a waiting one), until releases advance the oldest unfinished seq.
  Waiting is on futures that a `release` completes: no polling.
- `release(seq)` ends an issued seq, whatever the write's outcome (success, failure,
  cancellation); every issued seq must be released exactly once (`ValueError` otherwise).
- `slot()` is `acquire` + `release` around a block, on every exit path (`CancelledError`
  included). A caller cancelled while waiting takes no seq; one cancelled after its seq was
  handed over but before it resumed releases that seq itself.
- Bound to the event loop it is first used on; not thread safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

__all__ = ["SeqWindow"]


class SeqWindow:
    """Sequence numbers under the invariant of the module docstring."""

    __slots__ = ("_next", "_oldest", "_unfinished", "_waiters", "_window")

    def __init__(self, window: int, *, first: int = 1) -> None:
        if window < 1:
            raise ValueError("the window must be >= 1")
        self._window = window
        self._next = first  # the next seq to issue
        self._oldest = first  # the smallest unfinished seq; `_next` when none is
        self._unfinished: set[int] = set()
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()

    @property
    def window(self) -> int:
        return self._window

    @property
    def next_seq(self) -> int:
        """The seq the next `acquire` gets."""
        return self._next

    @property
    def oldest_unfinished(self) -> int | None:
        """The smallest issued seq not released yet (None when every one is)."""
        return self._oldest if self._unfinished else None

    @property
    def unfinished(self) -> int:
        """How many issued seqs are not released yet."""
        return len(self._unfinished)

    @property
    def waiting(self) -> int:
        """How many callers wait in `acquire`."""
        return sum(not f.done() for f in self._waiters)

    def try_acquire(self) -> int | None:
        """The next seq if it can be issued now without overtaking a waiter, else None."""
        if self._waiters or not self._can_issue():
            return None
        return self._issue()

    async def acquire(self) -> int:
        """The next seq, once the invariant allows it (see the module docstring)."""
        seq = self.try_acquire()
        if seq is not None:
            return seq
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed over, but the caller is gone
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
                self._hand_over()
            raise

    def release(self, seq: int) -> None:
        """End the issued, unfinished `seq`; wake the waiters it lets through."""
        try:
            self._unfinished.remove(seq)
        except KeyError:
            raise ValueError(f"seq {seq} is not an unfinished seq of this window") from None
        if seq == self._oldest:
            # every seq below `_next` was issued: the ones not unfinished are released
            while self._oldest < self._next and self._oldest not in self._unfinished:
                self._oldest += 1
            self._hand_over()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """A seq for the block, released when the block exits in any way."""
        seq = await self.acquire()
        try:
            yield seq
        finally:
            self.release(seq)

    def _can_issue(self) -> bool:
        return self._next <= self._oldest + self._window - 1

    def _issue(self) -> int:
        seq = self._next
        self._next += 1
        self._unfinished.add(seq)
        return seq

    def _hand_over(self) -> None:
        """Give seqs to the waiters, oldest first, while the invariant allows it."""
        while self._waiters and self._can_issue():
            fut = self._waiters.popleft()
            if not fut.done():  # a cancelled waiter takes nothing
                fut.set_result(self._issue())
