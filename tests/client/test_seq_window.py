"""`SeqWindow` (raftreg/client/seq_window.py): a write's seq is issued only while every
unfinished seq is within the window of it; waiters are served first come first served and
proceed as soon as the oldest unfinished seq ends; every exit path releases.

The tests own the releases (the window's `release` is synchronous), so each step's outcome is
exact; tasks only wait in `acquire`, and `settle` lets every woken task run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.client.seq_window import SeqWindow

pytestmark = pytest.mark.timeout(60)


async def settle() -> None:
    """Let every task woken by a release or a cancellation run to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_seqs_are_issued_in_order_while_the_window_allows() -> None:
    w = SeqWindow(3)
    assert [await w.acquire() for _ in range(3)] == [1, 2, 3]
    assert w.try_acquire() is None  # 4 > 1 + 3 - 1
    assert (w.unfinished, w.oldest_unfinished, w.next_seq) == (3, 1, 4)
    w.release(1)
    assert w.try_acquire() == 4
    for s in (2, 3, 4):
        w.release(s)
    assert (w.unfinished, w.oldest_unfinished, w.next_seq) == (0, None, 5)


async def test_one_slow_old_write_holds_the_window_where_a_semaphore_would_not() -> None:
    """Only seq 1 is unfinished (a semaphore of 4 would have 3 slots free), but seq 5 would be
    `window` past it: the server could then refuse a retry of seq 1 as too old."""
    w = SeqWindow(4)
    assert w.try_acquire() == 1
    for _ in range(3):
        s = w.try_acquire()
        assert s is not None
        w.release(s)
    assert w.unfinished == 1 and w.try_acquire() is None
    later = asyncio.create_task(w.acquire())
    await settle()
    assert not later.done() and w.waiting == 1
    w.release(1)
    assert await asyncio.wait_for(later, 5) == 5


async def test_waiters_are_served_in_arrival_order_when_the_oldest_ends() -> None:
    w = SeqWindow(2)
    assert (await w.acquire(), await w.acquire()) == (1, 2)
    order: list[tuple[str, int]] = []

    async def take(name: str) -> None:
        order.append((name, await w.acquire()))

    tasks = [asyncio.create_task(take(n)) for n in "abc"]
    await settle()
    w.release(2)  # not the oldest: nobody may pass (3 > 1 + 2 - 1)
    await settle()
    assert order == [] and w.waiting == 3
    assert w.try_acquire() is None, "a newcomer does not overtake the waiters"
    w.release(1)  # oldest is now 3: a gets 3, b gets 4 (4 <= 3 + 1); c waits for 3
    await settle()
    assert order == [("a", 3), ("b", 4)]
    w.release(4)
    await settle()
    assert order == [("a", 3), ("b", 4)]
    w.release(3)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [("a", 3), ("b", 4), ("c", 5)]


async def test_a_waiter_cancelled_while_waiting_takes_no_seq() -> None:
    w = SeqWindow(1)
    assert w.try_acquire() == 1
    gone = asyncio.create_task(w.acquire())
    kept = asyncio.create_task(w.acquire())
    await settle()
    gone.cancel()
    await settle()
    assert gone.cancelled() and w.waiting == 1
    w.release(1)
    assert await asyncio.wait_for(kept, 5) == 2  # seq 2 was not spent on the cancelled waiter
    w.release(2)
    assert w.unfinished == 0 and w.waiting == 0


async def test_a_waiter_cancelled_after_its_seq_was_handed_over_releases_it() -> None:
    w = SeqWindow(1)
    assert w.try_acquire() == 1
    handed = asyncio.create_task(w.acquire())
    after = asyncio.create_task(w.acquire())
    await settle()
    w.release(1)  # hands 2 to `handed`, which has not run yet ...
    handed.cancel()  # ... and is cancelled before it does
    await settle()
    assert handed.cancelled()
    assert await asyncio.wait_for(after, 5) == 3  # 2 was released, so 3 could be issued
    w.release(3)
    assert w.unfinished == 0 and w.oldest_unfinished is None


async def test_a_slot_is_released_on_an_error_and_on_cancellation() -> None:
    w = SeqWindow(1)
    with pytest.raises(RuntimeError):
        async with w.slot() as seq:
            assert seq == 1 and w.unfinished == 1
            raise RuntimeError("boom")
    assert w.unfinished == 0
    inside = asyncio.Event()

    async def hold() -> None:
        async with w.slot():
            inside.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(inside.wait(), 5)
    waiter = asyncio.create_task(w.acquire())
    await settle()
    assert not waiter.done()
    holder.cancel()
    assert await asyncio.wait_for(waiter, 5) == 3
    assert holder.cancelled()


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        SeqWindow(0)
    w = SeqWindow(2)
    with pytest.raises(ValueError):
        w.release(1)  # never issued
    assert w.try_acquire() == 1
    w.release(1)
    with pytest.raises(ValueError):
        w.release(1)  # released twice


# --- property: random interleavings of writes starting, ending and being cancelled ------------

Op = tuple[str, int]
OPS = st.one_of(
    st.tuples(st.just("start"), st.just(0)),
    st.tuples(st.just("finish"), st.integers(0, 40)),  # release the k-th held seq
    st.tuples(st.just("cancel"), st.integers(0, 40)),  # cancel the k-th waiting writer
    st.tuples(st.just("finish+cancel"), st.integers(0, 40)),  # both at once, in one step
)


@dataclass
class Model:
    window: SeqWindow
    held: dict[int, int] = field(default_factory=dict)  # writer -> its unreleased seq
    got: dict[int, int] = field(default_factory=dict)  # writer -> the seq it got
    max_issued: int = 0
    violations: list[str] = field(default_factory=list)

    def check(self) -> None:
        """No seq issued so far exceeds the oldest unfinished seq + window - 1."""
        if self.held and self.max_issued > min(self.held.values()) + self.window.window - 1:
            self.violations.append(f"issued {self.max_issued} with {sorted(self.held.values())}"
                                   f" unfinished, window {self.window.window}")


async def run_schedule(size: int, ops: list[Op]) -> None:
    m = Model(SeqWindow(size))
    writers: list[asyncio.Task[None]] = []

    async def writer(i: int) -> None:
        seq = await m.window.acquire()
        m.got[i] = seq
        m.held[i] = seq
        m.max_issued = max(m.max_issued, seq)
        m.check()

    def waiting() -> list[int]:
        return [i for i, t in enumerate(writers) if not t.done()]

    def finish(k: int) -> None:
        if m.held:
            i = sorted(m.held)[k % len(m.held)]
            m.window.release(m.held.pop(i))

    def cancel(k: int) -> None:
        if w := waiting():
            writers[w[k % len(w)]].cancel()

    for op, k in ops:
        if op == "start":
            writers.append(asyncio.create_task(writer(len(writers))))
        elif op == "finish":
            finish(k)
        elif op == "cancel":
            cancel(k)
        else:  # a release hands a seq to a waiter that is cancelled before it runs
            finish(k)
            cancel(0)
        await settle()
        m.check()
        assert m.window.unfinished >= len(m.held)

    # Every writer not cancelled proceeds once the earlier ones end.
    while waiting():
        before = len(m.got)
        for i in list(m.held):
            m.window.release(m.held.pop(i))
        await settle()
        assert len(m.got) > before, f"writers {waiting()} wait for nothing: {m.window.waiting}"
    for i in list(m.held):
        m.window.release(m.held.pop(i))

    assert m.violations == []
    finished = [i for i, t in enumerate(writers) if not t.cancelled()]
    assert sorted(m.got) == finished
    seqs = [m.got[i] for i in finished]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "first come, first served"
    assert m.window.unfinished == 0 and m.window.waiting == 0
    assert m.window.oldest_unfinished is None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.lists(OPS, max_size=60))
def test_random_schedules_keep_the_window_and_serve_everyone(size: int, ops: list[Op]) -> None:
    asyncio.run(run_schedule(size, ops))
