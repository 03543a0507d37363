"""CircuitBreaker on a manual clock: the state table, the sliding window, probes, permits,
live reconfiguration, and a model check of the bucketed window."""

from __future__ import annotations

import asyncio
import math

import grpc
import grpc.aio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.errors import NotFound, Unavailable
from raftreg.resilience import (
    BreakerGroup,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ManualClock,
)

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker(clock: ManualClock, **kw: float) -> CircuitBreaker:
    settings: dict[str, float] = {
        "min_calls": 10,
        "window_s": 10.0,
        "open_for_s": 30.0,
        "half_open_probes": 3,
    }
    settings.update(kw)
    return CircuitBreaker("svc", clock=clock, **settings)  # type: ignore[arg-type]


def feed(b: CircuitBreaker, ok: int, bad: int) -> None:
    for _ in range(ok):
        assert b.allow()
        b.record(True)
    for _ in range(bad):
        assert b.allow()
        b.record(False)


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    b = breaker(ManualClock())
    feed(b, 0, 9)
    assert b.state is CLOSED and b.counts() == (0, 9)


def test_opens_at_the_threshold_not_below() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=10)
    feed(b, 6, 4)  # 40 %
    assert b.state is CLOSED
    b2 = breaker(clock, min_calls=10)
    feed(b2, 5, 4)  # 9 calls, 44 %
    assert b2.state is CLOSED
    b2.record(False)  # 10 calls, 50 %
    assert b2.state is OPEN


def test_old_outcomes_slide_out_of_the_window() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=10, window_s=10.0, buckets=10)
    feed(b, 0, 9)
    clock.advance(10.0)  # the 9 failures are now older than the window
    assert b.counts() == (0, 0)
    feed(b, 9, 1)
    assert b.state is CLOSED
    clock.advance(5.0)
    feed(b, 0, 7)  # window: 9 ok + 1 bad (5 s old) + 7 bad = 8/17 failed
    assert b.state is CLOSED
    feed(b, 0, 1)  # 9/18 failed
    assert b.state is OPEN


def test_window_resolution_is_one_bucket() -> None:
    clock = ManualClock(0.0)
    b = breaker(clock, window_s=10.0, buckets=10)
    feed(b, 0, 1)  # bucket [0, 1)
    clock.advance(9.99)
    assert b.counts() == (0, 1)  # still inside the last 10 buckets
    clock.advance(0.01)
    assert b.counts() == (0, 0)


def test_open_rejects_then_half_open_after_open_for() -> None:
    clock = ManualClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    b = breaker(clock, min_calls=4)
    b._listener = lambda br, old, new: transitions.append((old, new))
    feed(b, 0, 4)
    assert b.state is OPEN and not b.allow()
    assert b.retry_after() == 30.0
    clock.advance(29.999)
    assert b.state is OPEN and not b.allow()
    clock.advance(0.001)
    assert b.state is HALF and b.retry_after() == 0.0
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF)]


def open_then_half(clock: ManualClock, **kw: float) -> CircuitBreaker:
    b = breaker(clock, min_calls=4, **kw)
    feed(b, 0, 4)
    clock.advance(b.settings.open_for_s)
    assert b.state is HALF
    return b


def test_half_open_admits_at_most_the_probe_count() -> None:
    clock = ManualClock()
    b = open_then_half(clock, half_open_probes=3)
    assert [b.allow() for _ in range(5)] == [True, True, True, False, False]
    b.record(True)
    assert not b.allow()  # one succeeded, two in flight: all three slots used
    b.record(True)
    b.record(True)
    assert b.state is CLOSED and b.counts() == (0, 0)
    assert b.allow()


def test_any_probe_failure_reopens_and_the_wait_starts_over() -> None:
    clock = ManualClock()
    b = open_then_half(clock, half_open_probes=3)
    assert b.allow() and b.allow()
    b.record(True)
    b.record(False)
    assert b.state is OPEN and b.retry_after() == 30.0
    clock.advance(30.0)
    assert b.state is HALF


def test_a_released_probe_frees_its_slot() -> None:
    clock = ManualClock()
    b = open_then_half(clock, half_open_probes=1)
    p = b.acquire()
    assert p is not None and b.acquire() is None
    p.release()
    p.release()
    q = b.acquire()
    assert q is not None
    q.record(True)
    assert b.state is CLOSED


def test_permits_from_before_a_state_change_are_ignored() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=4)
    early = [b.acquire() for _ in range(3)]
    feed(b, 0, 4)
    assert b.state is OPEN
    clock.advance(30.0)
    probe = b.acquire()
    assert b.state is HALF and probe is not None
    for p in early:
        assert p is not None
        p.record(False)  # stale: must not re-open the half-open breaker
    assert b.state is HALF
    probe.record(True)
    probe.record(False)  # a permit settles once
    assert b.state is HALF


def test_sustain_requires_the_rate_to_hold() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=4, sustain_s=10.0, window_s=20.0)
    feed(b, 0, 4)
    assert b.state is CLOSED
    clock.advance(9.0)
    feed(b, 0, 1)
    assert b.state is CLOSED
    clock.advance(1.0)
    feed(b, 0, 1)
    assert b.state is OPEN


def test_sustain_restarts_when_the_rate_drops() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=4, sustain_s=10.0, window_s=60.0)
    feed(b, 0, 4)
    clock.advance(5.0)
    feed(b, 5, 0)  # 4/9 failed: below 50 %, the clock restarts
    clock.advance(5.0)
    feed(b, 0, 1)  # 5/10: above again, since now
    assert b.state is CLOSED
    clock.advance(10.0)
    feed(b, 0, 1)
    assert b.state is OPEN


def test_configure_live() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=10)
    feed(b, 3, 3)
    b.configure(min_calls=6)
    feed(b, 1, 0)  # 3/7 failed = 43 %
    assert b.state is CLOSED
    b.configure(failure_rate=0.4)
    feed(b, 1, 0)  # 3/8 = 37.5 %
    assert b.state is CLOSED
    feed(b, 0, 1)  # 4/9 = 44 % >= 40 %
    assert b.state is OPEN
    b.configure(open_for_s=5.0)
    clock.advance(5.0)
    assert b.state is HALF
    b.configure(half_open_probes=1)
    feed(b, 1, 0)
    assert b.state is CLOSED
    b.configure(window_s=1.0)
    assert b.settings.window_s == 1.0 and b.counts() == (0, 0)
    with pytest.raises(ValueError):
        b.configure(failure_rate=1.5)
    with pytest.raises(TypeError):
        b.configure(nonsense=1)
    assert b.settings.failure_rate == 0.4


def test_group_creates_per_key_breakers_and_configures_them_all() -> None:
    clock = ManualClock()
    g = BreakerGroup(BreakerSettings(min_calls=2), clock=clock)
    a, b = g.get("/s/A"), g.get("/s/B")
    assert g.get("/s/A") is a and len(g) == 2
    feed(a, 0, 2)
    assert a.state is OPEN and b.state is CLOSED
    g.configure(open_for_s=1.0, min_calls=3)
    assert all(x.settings.open_for_s == 1.0 for x in g)
    assert g.get("/s/C").settings.min_calls == 3
    clock.advance(1.0)
    assert a.state is HALF


async def test_call_helper_records_rejects_and_falls_back() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=2, half_open_probes=1)
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        raise Unavailable("down")

    async def not_found() -> str:
        raise NotFound("no such key")

    async def answer() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    for _ in range(3):  # answers that are not service failures do not count
        with pytest.raises(NotFound):
            await b.call(not_found)
    assert b.counts() == (3, 0)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await b.call(broken)
    assert b.state is OPEN and calls == 3
    with pytest.raises(CircuitOpen) as info:
        await b.call(answer)
    assert isinstance(info.value, Unavailable) and info.value.retry_after == 30.0

    async def fallback(err: CircuitOpen) -> str:
        return f"cached ({err.name})"

    assert await b.call(answer, fallback=fallback) == "cached (svc)"
    assert calls == 3
    clock.advance(30.0)
    assert await b.call(answer) == "ok"
    assert b.state is CLOSED and calls == 4


async def test_a_cancelled_probe_records_nothing() -> None:
    clock = ManualClock()
    b = open_then_half(clock, half_open_probes=1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(b.call(hang))
    await started.wait()
    assert b.acquire() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is HALF and b.acquire() is not None


def test_grpc_status_failures() -> None:
    b = breaker(ManualClock())

    def err(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "", None)

    assert b.is_failure(err(grpc.StatusCode.UNAVAILABLE))
    assert b.is_failure(err(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert b.is_failure(err(grpc.StatusCode.INTERNAL))
    assert not b.is_failure(err(grpc.StatusCode.NOT_FOUND))
    assert not b.is_failure(err(grpc.StatusCode.INVALID_ARGUMENT))
    assert b.is_failure(ConnectionResetError())


def test_a_failing_listener_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def listener(br: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("listener bug")

    b = CircuitBreaker("svc", min_calls=1, clock=ManualClock(), on_state_change=listener)
    b.record(False)
    assert b.state is OPEN
    assert "listener failed" in caplog.text


# Model check: the bucketed O(1) window against a plain list of timed outcomes.
steps = st.lists(
    st.tuples(st.floats(0.0, 4.0, allow_nan=False), st.booleans()), min_size=1, max_size=120
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, min_calls=st.integers(1, 8), rate=st.sampled_from([0.25, 0.5, 0.75, 1.0]))
def test_window_matches_a_model(
    steps: list[tuple[float, bool]], min_calls: int, rate: float
) -> None:
    clock = ManualClock(0.0)
    window_s, buckets = 10.0, 5
    b = CircuitBreaker(
        "m",
        min_calls=min_calls,
        failure_rate=rate,
        window_s=window_s,
        buckets=buckets,
        open_for_s=math.inf,
        clock=clock,
    )
    width = window_s / buckets
    outcomes: list[tuple[float, bool]] = []
    model_open = False
    for dt, ok in steps:
        clock.advance(dt)
        now = clock.now()
        if model_open:
            assert not b.allow()
            continue
        assert b.allow()
        b.record(ok)
        outcomes.append((now, ok))
        head = math.floor(now / width)
        live = [o for t, o in outcomes if math.floor(t / width) > head - buckets]
        bad = live.count(False)
        assert b.counts() == (len(live) - bad, bad)
        model_open = len(live) >= min_calls and bad >= rate * len(live)
        assert (b.state is OPEN) == model_open
