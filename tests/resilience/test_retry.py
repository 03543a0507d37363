"""retry_call: which failures are retried (idempotent or proven not executed), attempts, the
overall budget and the propagated deadline; waits recorded on a virtual clock."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from raftreg import errors as E
from raftreg.common.status import ERROR_KEY
from raftreg.resilience import (
    NOT_EXECUTED_KEY,
    Attempt,
    Backoff,
    CircuitOpen,
    Deadline,
    RateLimited,
    RetryEvent,
    RetryPolicy,
    deadline_scope,
    retry_call,
)

from .helpers import VirtualClock

pytestmark = pytest.mark.timeout(30)

NO_JITTER = Backoff(base=0.1, multiplier=2.0, max_delay=10.0, jitter="none")


def status(code: grpc.StatusCode, *md: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*md), "x", None)


class Script:
    """Raises the scripted exceptions in order, then returns "ok"; records every attempt."""

    def __init__(self, clock: VirtualClock, *failures: BaseException, took: float = 0.0) -> None:
        self.clock = clock
        self.failures = list(failures)
        self.took = took
        self.attempts: list[Attempt] = []

    async def __call__(self, attempt: Attempt) -> str:
        self.attempts.append(attempt)
        self.clock.advance(self.took)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def run(
    script: Script, *, idempotent: bool, policy: RetryPolicy, clock: VirtualClock
) -> tuple[str, list[RetryEvent]]:
    events: list[RetryEvent] = []
    result = await retry_call(
        script, policy=policy, idempotent=idempotent, clock=clock, on_retry=events.append
    )
    return result, events


async def test_idempotent_call_is_retried_with_growing_waits() -> None:
    clock = VirtualClock()
    unavailable = status(grpc.StatusCode.UNAVAILABLE)
    script = Script(clock, unavailable, status(grpc.StatusCode.ABORTED), unavailable)
    policy = RetryPolicy(max_attempts=5, budget_s=10.0, backoff=NO_JITTER)
    result, events = await run(script, idempotent=True, policy=policy, clock=clock)
    assert result == "ok" and len(script.attempts) == 4
    assert [e.delay for e in events] == pytest.approx([0.1, 0.2, 0.4])
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert [e.attempt for e in events] == [1, 2, 3]
    assert [e.code for e in events][1] is grpc.StatusCode.ABORTED


async def test_max_attempts_bounds_the_calls_and_the_last_error_propagates() -> None:
    clock = VirtualClock()
    errors = [status(grpc.StatusCode.UNAVAILABLE) for _ in range(10)]
    script = Script(clock, *errors)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await run(script, idempotent=True, policy=RetryPolicy(max_attempts=3), clock=clock)
    assert info.value is errors[2]
    assert len(script.attempts) == 3


@pytest.mark.parametrize(
    "error",
    [
        status(grpc.StatusCode.UNAVAILABLE),  # may have been sent: ambiguous
        status(grpc.StatusCode.DEADLINE_EXCEEDED),
        status(grpc.StatusCode.ABORTED),
        status(grpc.StatusCode.UNAVAILABLE, (ERROR_KEY, "OutcomeUnknown")),
        status(grpc.StatusCode.UNAVAILABLE, (ERROR_KEY, "Unavailable")),  # says nothing
        E.OutcomeUnknown("maybe applied"),
        E.Unavailable("connection reset"),
        E.DeadlineExceeded("late"),
    ],
)
async def test_non_idempotent_call_is_not_retried_after_ambiguous_failures(
    error: BaseException,
) -> None:
    clock = VirtualClock()
    script = Script(clock, error)
    with pytest.raises(type(error)):
        await run(script, idempotent=False, policy=RetryPolicy(max_attempts=5), clock=clock)
    assert len(script.attempts) == 1 and clock.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        status(grpc.StatusCode.UNAVAILABLE, (NOT_EXECUTED_KEY, "1")),
        status(grpc.StatusCode.UNAVAILABLE, (ERROR_KEY, "NotApplied")),  # raftreg vouches
        E.NotApplied("no leader"),
        CircuitOpen("svc", 3.0),
    ],
)
async def test_non_idempotent_call_is_retried_when_provably_not_executed(
    error: BaseException,
) -> None:
    clock = VirtualClock()
    script = Script(clock, error, error)
    result, events = await run(
        script, idempotent=False, policy=RetryPolicy(max_attempts=5), clock=clock
    )
    assert result == "ok" and len(script.attempts) == 3 and len(events) == 2


async def test_resource_exhausted_is_retried_only_when_configured() -> None:
    limited = status(grpc.StatusCode.RESOURCE_EXHAUSTED, (NOT_EXECUTED_KEY, "1"))
    clock = VirtualClock()
    script = Script(clock, limited)
    with pytest.raises(grpc.aio.AioRpcError):
        await run(script, idempotent=True, policy=RetryPolicy(), clock=clock)
    assert len(script.attempts) == 1
    policy = RetryPolicy(retry_on={grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    script = Script(clock, limited, RateLimited("slow down"))
    result, _ = await run(script, idempotent=False, policy=policy, clock=clock)
    assert result == "ok" and len(script.attempts) == 3


@pytest.mark.parametrize(
    "error",
    [
        status(grpc.StatusCode.INVALID_ARGUMENT),
        status(grpc.StatusCode.NOT_FOUND, (NOT_EXECUTED_KEY, "1")),
        E.NotFound("nope"),
        ValueError("a bug"),
    ],
)
async def test_other_failures_are_never_retried(error: BaseException) -> None:
    clock = VirtualClock()
    script = Script(clock, error)
    with pytest.raises(type(error)):
        await run(script, idempotent=True, policy=RetryPolicy(max_attempts=5), clock=clock)
    assert len(script.attempts) == 1


async def test_the_budget_bounds_waits_and_attempt_timeouts() -> None:
    clock = VirtualClock()
    errors = [status(grpc.StatusCode.UNAVAILABLE) for _ in range(10)]
    script = Script(clock, *errors, took=0.1)
    backoff = Backoff(base=0.3, multiplier=2.0, max_delay=10.0, jitter="none")
    policy = RetryPolicy(max_attempts=10, budget_s=1.5, backoff=backoff)
    start = clock.now()
    with pytest.raises(grpc.aio.AioRpcError):
        await run(script, idempotent=True, policy=policy, clock=clock)
    # t=0 attempt (0.1) wait 0.3; t=0.4 attempt (0.1) wait 0.6; t=1.1 attempt (0.1);
    # then a 1.2 s wait would end after the budget (1.5 s): give up.
    assert len(script.attempts) == 3
    timeouts = [a.timeout for a in script.attempts]
    assert timeouts == pytest.approx([1.5, 1.1, 0.4])
    assert clock.now() - start == pytest.approx(1.2)


async def test_the_propagated_deadline_bounds_retries() -> None:
    clock = VirtualClock()
    errors = [status(grpc.StatusCode.UNAVAILABLE) for _ in range(10)]
    script = Script(clock, *errors)
    policy = RetryPolicy(max_attempts=10, budget_s=100.0, backoff=NO_JITTER)
    with deadline_scope(Deadline.from_timeout(0.5, clock)), pytest.raises(grpc.aio.AioRpcError):
        await run(script, idempotent=True, policy=policy, clock=clock)
    # waits 0.1, 0.2 (t=0.3); the next 0.4 would pass the 0.5 s deadline
    assert len(script.attempts) == 3
    assert script.attempts[0].timeout == pytest.approx(0.5)


async def test_an_expired_deadline_makes_no_call() -> None:
    clock = VirtualClock()
    script = Script(clock)
    with pytest.raises(E.DeadlineExceeded):
        await retry_call(
            script,
            policy=RetryPolicy(),
            idempotent=True,
            clock=clock,
            deadline=Deadline.from_timeout(0.0, clock),
        )
    assert script.attempts == []


async def test_deadline_exceeded_is_retried_when_a_per_attempt_cap_ended_it() -> None:
    clock = VirtualClock()
    late = status(grpc.StatusCode.DEADLINE_EXCEEDED)
    script = Script(clock, late, late, took=0.2)
    policy = RetryPolicy(max_attempts=5, budget_s=5.0, backoff=NO_JITTER, attempt_timeout_s=0.2)
    result, _ = await run(script, idempotent=True, policy=policy, clock=clock)
    assert result == "ok" and [a.timeout for a in script.attempts] == pytest.approx([0.2] * 3)


def test_policy_validation() -> None:
    bad: list[Callable[[], RetryPolicy]] = [
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetryPolicy(budget_s=0),
        lambda: RetryPolicy(attempt_timeout_s=-1),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()
