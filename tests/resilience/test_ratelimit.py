"""TokenBucket and RateLimiter on manual clocks: burst, refill, waiting, live
reconfiguration, per-method limits, and the admission bound as a property."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.resilience import ManualClock, RateLimit, RateLimiter, TokenBucket

from .helpers import VirtualClock

pytestmark = pytest.mark.timeout(30)


def test_burst_then_refill_at_the_rate() -> None:
    clock = ManualClock()
    b = TokenBucket(rate_per_s=2.0, burst=5, clock=clock)
    assert [b.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.49)
    assert not b.try_acquire()
    clock.advance(0.01)
    assert b.try_acquire() and not b.try_acquire()
    clock.advance(100.0)  # refill stops at the burst
    assert b.tokens == 5
    assert sum(b.try_acquire() for _ in range(10)) == 5


def test_acquiring_several_tokens() -> None:
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=3, clock=clock)
    assert b.try_acquire(2) and not b.try_acquire(2) and b.try_acquire(1)
    assert not b.try_acquire(4)  # more than the burst never fits
    with pytest.raises(ValueError):
        b.try_acquire(0)


async def test_acquire_waits_for_tokens_in_arrival_order() -> None:
    clock = VirtualClock()
    b = TokenBucket(rate_per_s=10.0, burst=1, clock=clock)
    assert await b.acquire()
    start = clock.now()
    assert await b.acquire()
    assert clock.now() - start == pytest.approx(0.1)
    assert await b.acquire(timeout=0.05) is False  # would need 0.1 s: nothing taken
    assert clock.now() - start == pytest.approx(0.1)
    assert await b.acquire(2) is False  # more than the burst


async def test_a_waiter_reserves_and_blocks_try_acquire() -> None:
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=1, clock=clock)
    assert b.try_acquire()
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    clock.advance(0.5)
    assert not b.try_acquire()  # the half token belongs to the waiter
    clock.advance(0.5)
    assert await waiter is True
    assert not b.try_acquire()


async def test_a_cancelled_waiter_gives_its_tokens_back() -> None:
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=2, clock=clock)
    assert b.try_acquire(2)
    waiter = asyncio.create_task(b.acquire(2))
    await asyncio.sleep(0)
    clock.advance(1.0)  # 1 token repaid of the 2 reserved
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert b.tokens == pytest.approx(1.0)


def test_configure_live_keeps_earned_tokens_capped() -> None:
    clock = ManualClock()
    b = TokenBucket(rate_per_s=1.0, burst=10, clock=clock)
    b.configure(burst=3)
    assert b.tokens == 3
    assert b.try_acquire(3)
    clock.advance(1.0)
    b.configure(rate_per_s=100.0)  # the past second still earned at 1/s
    assert b.tokens == pytest.approx(1.0)
    clock.advance(0.01)
    assert b.tokens == pytest.approx(2.0)
    with pytest.raises(ValueError):
        b.configure(rate_per_s=0)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0.5)
    assert b.rate_per_s == 100.0 and b.burst == 3


ops = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0.0, 2.0, allow_nan=False)),
        st.tuples(st.just("take"), st.integers(1, 3)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 50.0), burst=st.integers(1, 20), ops=ops, start=st.floats(0.0, 1e6))
def test_never_admits_more_than_burst_plus_rate_times_t(
    rate: float, burst: int, ops: list[tuple[str, float]], start: float
) -> None:
    clock = ManualClock(start)
    b = TokenBucket(rate, burst, clock=clock)
    admitted = 0.0
    for op, x in ops:
        if op == "wait":
            clock.advance(x)
        elif b.try_acquire(x):
            admitted += x
        assert admitted <= burst + rate * (clock.now() - start) + 1e-6


def test_limiter_resolves_method_then_service_then_default() -> None:
    clock = ManualClock()
    lim = RateLimiter(
        RateLimit(1.0, 1),
        {
            "/pkg.Users/Get": RateLimit(1.0, 3),
            "pkg.Users": RateLimit(1.0, 2),
            "pkg.Health": None,
        },
        clock=clock,
    )
    assert lim.limit_for("pkg.Users", "Get") == RateLimit(1.0, 3)
    assert lim.limit_for("pkg.Users", "Put") == RateLimit(1.0, 2)
    assert lim.limit_for("pkg.Other", "X") == RateLimit(1.0, 1)
    assert lim.limit_for("pkg.Health", "Check") is None
    assert sum(lim.try_acquire("/pkg.Users/Get") for _ in range(10)) == 3
    assert sum(lim.try_acquire("/pkg.Users/Put") for _ in range(10)) == 2
    assert sum(lim.try_acquire("/pkg.Users/Del") for _ in range(10)) == 2  # own bucket
    assert sum(lim.try_acquire("/pkg.Health/Check") for _ in range(10)) == 10
    assert lim.bucket("/pkg.Health/Check") is None


async def test_limiter_configure_replaces_the_table_live() -> None:
    clock = ManualClock()
    lim = RateLimiter(RateLimit(1.0, 5), clock=clock)
    assert sum(lim.try_acquire("/s/M") for _ in range(3)) == 3
    lim.configure(RateLimit(1.0, 10), {"s/N": None})
    assert sum(lim.try_acquire("/s/M") for _ in range(10)) == 2  # tokens kept, not refilled
    assert sum(lim.try_acquire("/s/N") for _ in range(50)) == 50
    lim.configure(None)
    assert lim.bucket("/s/M") is None and sum(lim.try_acquire("/s/M") for _ in range(50)) == 50
    lim.configure(RateLimit(1.0, 1))
    assert await lim.acquire("/s/M", timeout=0) is True
    assert await lim.acquire("/s/M", timeout=0) is False
