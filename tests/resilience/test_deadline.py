"""Deadlines: arithmetic on a manual clock, the current-deadline scope, outgoing timeouts and
timeout headers."""

from __future__ import annotations

import asyncio

import pytest

from raftreg.resilience import (
    Deadline,
    ManualClock,
    current_deadline,
    deadline_from_header,
    deadline_scope,
    earliest,
    outgoing_timeout,
    parse_timeout,
)


def test_remaining_and_expiry_follow_the_clock() -> None:
    clock = ManualClock(100.0)
    d = Deadline.from_timeout(2.0, clock)
    assert d.remaining() == 2.0 and not d.expired
    clock.advance(1.5)
    assert d.remaining() == pytest.approx(0.5)
    assert d.timeout(margin_s=0.2) == pytest.approx(0.3)
    assert d.timeout(margin_s=1.0) == 0.0
    clock.advance(0.5)
    assert d.expired and d.remaining() == 0.0
    clock.advance(10)
    assert d.remaining() == 0.0


def test_min_and_earliest() -> None:
    clock = ManualClock()
    a, b = Deadline.from_timeout(1.0, clock), Deadline.from_timeout(3.0, clock)
    assert a.min(b) is a and b.min(a) is a and a.min(None) is a
    assert earliest(None, b, None, a) is a
    assert earliest() is None and earliest(None) is None


def test_min_across_clocks_compares_remaining_time() -> None:
    slow, fast = ManualClock(0.0), ManualClock(1000.0)
    a = Deadline.from_timeout(5.0, slow)
    b = Deadline.from_timeout(2.0, fast)
    m = a.min(b)
    assert m.clock is slow and m.remaining() == pytest.approx(2.0)
    assert b.min(a) is b


def test_scope_only_tightens_and_restores() -> None:
    clock = ManualClock()
    assert current_deadline() is None
    outer = Deadline.from_timeout(1.0, clock)
    with deadline_scope(outer) as eff:
        assert eff is outer and current_deadline() is outer
        with deadline_scope(Deadline.from_timeout(5.0, clock)) as inner:
            assert inner is outer  # a nested scope cannot extend the deadline
        tighter = Deadline.from_timeout(0.5, clock)
        with deadline_scope(tighter):
            assert current_deadline() is tighter
        with deadline_scope(None):
            assert current_deadline() is outer
        assert current_deadline() is outer
    assert current_deadline() is None


async def test_the_current_deadline_follows_into_child_tasks_only() -> None:
    d = Deadline.from_timeout(3.0)
    with deadline_scope(d):
        child = await asyncio.create_task(_current())
    assert child is d
    assert await asyncio.create_task(_current()) is None


async def _current() -> Deadline | None:
    return current_deadline()


def test_outgoing_timeout() -> None:
    clock = ManualClock()
    d = Deadline.from_timeout(2.0, clock)
    assert outgoing_timeout(None, deadline=None) is None
    assert outgoing_timeout(5.0, deadline=None) == 5.0
    assert outgoing_timeout(None, deadline=d, margin_s=0.5) == pytest.approx(1.5)
    assert outgoing_timeout(1.0, deadline=d, margin_s=0.5) == 1.0
    assert outgoing_timeout(5.0, deadline=d, margin_s=0.5) == pytest.approx(1.5)
    clock.advance(3)
    assert outgoing_timeout(5.0, deadline=d) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250m", 0.25),
        ("5S", 5.0),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("1500u", 0.0015),
        ("7n", 7e-9),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("0", 0.0),
    ],
)
def test_parse_timeout(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "-1", "5x", "123456789S", "inf", "nan", "1e400"])
def test_parse_timeout_refuses_garbage(value: str) -> None:
    with pytest.raises(ValueError):
        parse_timeout(value)


def test_deadline_from_header() -> None:
    clock = ManualClock()
    assert deadline_from_header(None, clock=clock) is None
    capped = deadline_from_header(None, clock=clock, max_s=10.0)
    assert capped is not None and capped.remaining() == 10.0
    d = deadline_from_header("250m", clock=clock, max_s=10.0)
    assert d is not None and d.remaining() == pytest.approx(0.25)
    d = deadline_from_header("60S", clock=clock, max_s=10.0)
    assert d is not None and d.remaining() == 10.0
    with pytest.raises(ValueError):
        Deadline.from_timeout(float("nan"), clock)
