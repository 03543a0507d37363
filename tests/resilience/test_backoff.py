"""Backoff delays: growth without jitter, bounds with jitter (seeded)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.resilience import Backoff


def test_no_jitter_grows_by_the_multiplier_up_to_the_cap() -> None:
    b = Backoff(base=0.1, multiplier=2.0, max_delay=1.0, jitter="none")
    assert list(itertools.islice(b, 6)) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert Backoff(base=1.0, multiplier=3.0, max_delay=100.0, jitter="none").delay(4) == 27.0


def test_huge_retry_numbers_stay_at_the_cap() -> None:
    b = Backoff(base=0.1, multiplier=10.0, max_delay=5.0, jitter="none")
    assert b.delay(10_000) == 5.0


def test_seeded_jitter_is_reproducible() -> None:
    a = Backoff(jitter="full", rng=random.Random(7))
    b = Backoff(jitter="full", rng=random.Random(7))
    assert list(itertools.islice(a, 10)) == list(itertools.islice(b, 10))


@settings(deadline=None)  # no per-example time limit: a loaded machine is no failure
@given(
    seed=st.integers(0, 2**32),
    base=st.floats(0.001, 1.0),
    multiplier=st.floats(1.0, 4.0),
    max_delay=st.floats(0.001, 10.0),
    n=st.integers(1, 60),
)
def test_jitter_stays_within_bounds(
    seed: int, base: float, multiplier: float, max_delay: float, n: int
) -> None:
    full = Backoff(base, multiplier, max_delay, "full", random.Random(seed))
    equal = Backoff(base, multiplier, max_delay, "equal", random.Random(seed))
    cap = full.cap(n)
    assert math.isclose(cap, min(max_delay, base * multiplier ** (n - 1)), rel_tol=1e-9)
    assert 0.0 <= full.delay(n) <= cap
    assert cap / 2 <= equal.delay(n) <= cap
    assert cap <= max_delay


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)
    with pytest.raises(ValueError):
        Backoff(base=-1)
    with pytest.raises(ValueError):
        Backoff(jitter="weird")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Backoff().delay(0)
