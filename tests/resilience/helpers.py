"""Test helpers: a virtual clock whose sleeps jump time, and a real grpc.aio server on
127.0.0.1 with generic bytes handlers (stopped on exit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from raftreg.resilience import ManualClock


class VirtualClock(ManualClock):
    """A manual clock whose `sleep(d)` moves time forward by `d` at once (and yields once), so
    code that backs off runs instantly while its view of time stays exact. `sleeps` records
    every requested delay."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


@asynccontextmanager
async def serve(
    services: Mapping[str, Mapping[str, grpc.RpcMethodHandler[Any, Any]]],
    interceptors: Iterable[Any] = (),
    thread_pool: Executor | None = None,
) -> AsyncIterator[str]:
    """A started grpc.aio server with `services` (service name -> method -> handler); yields
    its "127.0.0.1:port" and stops it on exit. `thread_pool` runs synchronous handlers."""
    server = grpc.aio.server(migration_thread_pool=thread_pool, interceptors=list(interceptors))
    for name, methods in services.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll `predicate()` until true (bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
