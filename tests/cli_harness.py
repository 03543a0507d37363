"""`CliHarness`: runs `raftreg` commands in-process against the real in-memory backend.

Every command builds, uses and closes its own `MemoryRegistryClient`, as the CLI does with a
real client; all of them share one `Store` and one `ManualClock`, so state carries from command
to command. A `script` runs on the command's own loop next to it (the factory starts it), to
write, advance the clock and finally "press Ctrl-C" by cancelling the command's task (what
asyncio.run does on SIGINT).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Sequence
from unittest import mock

from raftreg.cli import run
from raftreg.client import MemoryRegistryClient
from raftreg.common.clock import ManualClock
from raftreg.common.types import Put
from raftreg.store import Store
from raftreg.store.commands import Command, Request

Script = Callable[[MemoryRegistryClient, "asyncio.Task[object]", io.StringIO], Awaitable[None]]

# The calls `spy=True` records (as `unittest.mock.AsyncMock`s wrapping the real methods).
SPIED = ("get", "put", "delete", "txn")


class CliHarness:
    """`harness(*argv, stdin=..., script=...)` -> (exit code, stdout, stderr); `out` and `err`
    keep the last command's streams. `args` go before every argv; `client_class` builds the
    clients (a `MemoryRegistryClient` or a subclass); `unavailable` makes every client refuse
    every call. Records the factory's arguments and the clients it built."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        args: Sequence[str] = (),
        client_class: type[MemoryRegistryClient] = MemoryRegistryClient,
        spy: bool = False,
        unavailable: bool = False,
    ) -> None:
        self.store = store or Store()
        self.clock = ManualClock()
        self.args = list(args)
        self.client_class = client_class
        self.spy = spy
        self.unavailable = unavailable
        self.clients: list[MemoryRegistryClient] = []
        self.factory_args: list[tuple[list[str], float]] = []
        self.script_error: BaseException | None = None
        self.out, self.err = io.StringIO(), io.StringIO()
        self._script: tuple[Script, io.StringIO] | None = None

    def factory(self, endpoints: Sequence[str], timeout: float) -> MemoryRegistryClient:
        self.factory_args.append((list(endpoints), timeout))
        m = self.client_class(store=self.store, clock=self.clock, seed=5,
                              endpoint=endpoints[0] if endpoints else "memory:0")
        m.set_unavailable(self.unavailable)
        if self.spy:
            for name in SPIED:
                setattr(m, name, mock.AsyncMock(wraps=getattr(m, name)))
        self.clients.append(m)
        if self._script is not None:
            self._start(m, *self._script)
        return m

    def _start(self, m: MemoryRegistryClient, script: Script, out: io.StringIO) -> None:
        main = asyncio.current_task()
        assert main is not None

        async def drive() -> None:
            try:
                await script(m, main, out)
            except asyncio.CancelledError:
                pass  # the command ended first; asyncio.run cancels leftovers
            except BaseException as e:
                self.script_error = e
                main.cancel()

        asyncio.get_running_loop().create_task(drive())

    def __call__(
        self, *argv: str, stdin: str = "", script: Script | None = None
    ) -> tuple[int, str, str]:
        out, err = self.out, self.err = io.StringIO(), io.StringIO()
        self._script = None if script is None else (script, out)
        try:
            code = run([*self.args, *argv], client_factory=self.factory,
                       stdin=io.StringIO(stdin), stdout=out, stderr=err)
        finally:
            self._script = None
        if self.script_error is not None:
            raise self.script_error
        return code, out.getvalue(), err.getvalue()

    @property
    def last(self) -> MemoryRegistryClient:
        return self.clients[-1]

    def spied(self, name: str) -> mock.AsyncMock:
        """The last client's `name` call as recorded (`spy=True`; `name` in `SPIED`)."""
        spy = getattr(self.last, name)
        assert isinstance(spy, mock.AsyncMock), f"{name} is not spied"
        return spy

    def apply(self, command: Command) -> int:
        """Applies `command` to the shared store directly; returns the revision after it."""
        result, _ = self.store.apply(Request(command))
        return result.revision

    def put(self, key: str, value: str | bytes) -> int:
        return self.apply(Put(key.encode(), value.encode() if isinstance(value, str) else value))
