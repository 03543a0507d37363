"""`raftreg.client.aio.wait_for` never loses the caller's cancellation (CPython gh-86296)."""

from __future__ import annotations

import asyncio

import pytest

from raftreg.client import aio

pytestmark = pytest.mark.timeout(10)


async def test_a_cancel_that_arrives_with_the_result_is_raised() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(aio.wait_for(fut, 10))
    await asyncio.sleep(0)  # the task now waits inside wait_for
    fut.set_result(1)  # the result and the cancel land in the same loop turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_results_and_timeouts_are_as_asyncio_wait_for() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    fut.set_result(7)
    assert await aio.wait_for(fut, 1) == 7
    with pytest.raises(TimeoutError):
        await aio.wait_for(asyncio.Event().wait(), 0.01)
