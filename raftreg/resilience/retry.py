"""Retries with exponential backoff inside an overall time budget.

Contracts of `retry_call`:
- Attempt 1 is always made unless the overall deadline has already passed (then
  `raftreg.errors.DeadlineExceeded` is raised and nothing is called). The overall deadline is
  the earliest of: the current (propagated) deadline, the `deadline` argument, and
  `policy.budget_s` from the start of the first attempt.
- After a failed attempt `n`, another is made only if all hold: `classify` maps the exception
  to a `Failure`; its code is in `policy.retry_on`; the call is idempotent, or the failure
  proves the request was not executed (`raftreg.resilience.rpc` states that rule); `n <
  policy.max_attempts`; and the backoff delay ends before the overall deadline. Otherwise the
  last exception propagates unchanged.
- Each attempt gets `Attempt.timeout`: what is left of the overall deadline, capped by
  `policy.attempt_timeout_s` (None when neither bounds it). A DEADLINE_EXCEEDED attempt is
  therefore retried only when a per-attempt cap, not the overall deadline, ended it.
- Every wait is reported to `on_retry` before it starts, so callers and tests can see the
  delays grow as configured. Cancellation is never retried or swallowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from raftreg.common.backoff import Backoff
from raftreg.errors import DeadlineExceeded
from raftreg.resilience.clock import MONOTONIC, Clock
from raftreg.resilience.deadline import Deadline, current_deadline, earliest
from raftreg.resilience.rpc import Failure, classify

T = TypeVar("T")

IDEMPOTENT_RETRY_ON: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often to retry. `retry_on` lists the retryable codes (add
    RESOURCE_EXHAUSTED to retry past a server's rate limit); `budget_s` bounds the whole call,
    first attempt to last answer; `attempt_timeout_s` caps each attempt."""

    max_attempts: int = 3
    budget_s: float | None = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: AbstractSet[grpc.StatusCode] = IDEMPOTENT_RETRY_ON
    attempt_timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError("budget_s must be > 0")
        if self.attempt_timeout_s is not None and not self.attempt_timeout_s > 0:
            raise ValueError("attempt_timeout_s must be > 0")

    def retryable(self, failure: Failure, *, idempotent: bool) -> bool:
        """Whether this failure may be retried at all (attempts and time aside)."""
        return failure.code in self.retry_on and (idempotent or failure.not_executed)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt: its number (from 1) and the seconds it may take (None: unbounded)."""

    number: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Attempt `attempt` failed with `code`; the next one starts after `delay` seconds."""

    attempt: int
    code: grpc.StatusCode
    delay: float


async def retry_call(
    fn: Callable[[Attempt], Awaitable[T]],
    *,
    policy: RetryPolicy,
    idempotent: bool,
    deadline: Deadline | None = None,
    clock: Clock = MONOTONIC,
    classify_error: Callable[[BaseException], Failure | None] = classify,
    on_retry: Callable[[RetryEvent], None] | None = None,
) -> T:
    """`await fn(attempt)` until it succeeds or may not be retried (see the module docstring)."""
    budget = None if policy.budget_s is None else Deadline.from_timeout(policy.budget_s, clock)
    overall = earliest(current_deadline(), deadline, budget)
    if overall is not None and overall.expired:
        raise DeadlineExceeded("the deadline passed before the first attempt")
    n = 0
    while True:
        n += 1
        timeout = overall.remaining() if overall is not None else None
        cap = policy.attempt_timeout_s
        if cap is not None:
            timeout = cap if timeout is None else min(timeout, cap)
        try:
            return await fn(Attempt(n, timeout))
        except Exception as exc:
            failure = classify_error(exc)
            if (
                failure is None
                or not policy.retryable(failure, idempotent=idempotent)
                or n >= policy.max_attempts
            ):
                raise
            delay = policy.backoff.delay(n)
            if overall is not None and delay >= overall.remaining():
                raise
            if on_retry is not None:
                on_retry(RetryEvent(n, failure.code, delay))
        await clock.sleep(delay)
