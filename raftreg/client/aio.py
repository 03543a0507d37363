"""asyncio helpers the client's waits share.

`wait_for` is `asyncio.wait_for` that never swallows a cancellation: on Python 3.11 the standard
one returns the inner result when the caller's cancel() arrives just as the inner awaitable
finishes (CPython gh-86296), and the cancel is then lost (a cancelled lock acquire that waits on
a watch confirmation hung this way). Here the task's `cancelling()` count, compared with its
value before the wait, shows such a cancel, and it is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """`asyncio.wait_for(aw, timeout)`, raising `CancelledError` if the calling task was
    cancelled during the wait even when the inner result arrived at the same moment."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await asyncio.wait_for(aw, timeout)
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result
