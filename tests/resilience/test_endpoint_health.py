"""EndpointHealth: N consecutive failures mark an endpoint down for a cool-down; probation."""

from __future__ import annotations

import pytest

from raftreg.resilience import EndpointHealth, ManualClock


def test_marked_unavailable_after_n_consecutive_failures_and_back_after_cooldown() -> None:
    clock = ManualClock()
    h = EndpointHealth(failure_threshold=3, cooldown_s=30.0, clock=clock)
    for _ in range(2):
        h.record_failure("a:1")
    assert h.is_available("a:1")
    h.record_failure("a:1")
    assert not h.is_available("a:1")
    assert h.unavailable_for("a:1") == 30.0
    assert h.available(["a:1", "b:2"]) == ["b:2"]
    clock.advance(29.9)
    assert not h.is_available("a:1")
    clock.advance(0.1)
    assert h.is_available("a:1") and h.unavailable_for("a:1") == 0.0


def test_a_success_resets_the_count() -> None:
    h = EndpointHealth(failure_threshold=2, clock=ManualClock())
    for _ in range(5):
        h.record_failure("a")
        h.record_success("a")
    assert h.is_available("a")


def test_after_the_cooldown_one_failure_marks_it_again_one_success_clears_it() -> None:
    clock = ManualClock()
    h = EndpointHealth(failure_threshold=3, cooldown_s=10.0, clock=clock)
    for _ in range(3):
        h.record_failure("a")
    clock.advance(10)
    h.record_failure("a")  # on probation: one failure is enough
    assert not h.is_available("a")
    clock.advance(10)
    h.record_success("a")
    h.record_failure("a")
    h.record_failure("a")
    assert h.is_available("a")  # cleared: the full threshold applies again


def test_configure_live() -> None:
    h = EndpointHealth(failure_threshold=5, clock=ManualClock())
    h.record_failure("a")
    h.configure(failure_threshold=2)
    h.record_failure("a")
    assert not h.is_available("a")
    with pytest.raises(ValueError):
        h.configure(failure_threshold=0)
    with pytest.raises(ValueError):
        h.configure(cooldown_s=-1)
