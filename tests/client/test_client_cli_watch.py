"""`raftreg watch`, `raftreg lease keep-alive`, `lease grant` and `put --lease` over the in-memory
client. The client factory runs on the command's own loop, so it also starts a small script task
that writes, advances the manual clock, and finally "presses Ctrl-C" by cancelling the command's
task, exactly what asyncio.run does on SIGINT."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Sequence

import pytest

from raftreg.cli import run
from raftreg.client import MemoryRegistryClient
from raftreg.common.types import Put
from raftreg.store import Store
from raftreg.store.commands import Compact, LeaseGrant, Request

pytestmark = pytest.mark.timeout(20)

Script = Callable[[MemoryRegistryClient, "asyncio.Task[object]", io.StringIO], Awaitable[None]]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


class Harness:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.script_error: BaseException | None = None

    def run(self, argv: Sequence[str], script: Script | None = None) -> int:
        self.out, self.err = io.StringIO(), io.StringIO()

        def factory(endpoints: Sequence[str], timeout: float) -> MemoryRegistryClient:
            m = MemoryRegistryClient(store=self.store, seed=5)
            main = asyncio.current_task()
            assert main is not None
            if script is not None:

                async def drive() -> None:
                    try:
                        await script(m, main, self.out)
                    except asyncio.CancelledError:
                        pass  # the command ended first; asyncio.run cancels leftovers
                    except BaseException as e:
                        self.script_error = e
                        main.cancel()

                asyncio.get_running_loop().create_task(drive())
            return m

        code = run(argv, client_factory=factory, stdout=self.out, stderr=self.err)
        if self.script_error is not None:
            raise self.script_error
        return code


def lines(s: io.StringIO) -> list[str]:
    return s.getvalue().splitlines()


def test_watch_prints_events_until_ctrl_c() -> None:
    h = Harness()

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: m.watch_count == 1)
        await m.put("svc/a", "1")
        await m.put("other", "x")
        await m.delete("svc/a")
        await until(lambda: out.getvalue().count("\n") >= 6)
        main.cancel()  # Ctrl-C

    assert h.run(["watch", "svc/", "--prefix"], script) == 0
    assert lines(h.out) == ["PUT", "svc/a", "1", "DELETE", "svc/a", ""]
    assert h.err.getvalue() == ""


def test_watch_from_a_revision_with_prev_kv_as_json() -> None:
    store = Store()
    store.apply(Request(Put(b"k", b"1")))  # rev 2
    store.apply(Request(Put(b"k", b"2")))  # rev 3
    h = Harness(store)

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().count("\n") >= 1)
        main.cancel()

    assert h.run(["watch", "k", "--rev", "2", "--prev-kv", "-w", "json"], script) == 0
    (doc,) = [json.loads(x) for x in lines(h.out)]
    assert doc["header"]["revision"] == 3
    assert [e["type"] for e in doc["events"]] == ["PUT", "PUT"]
    assert [e["kv"]["mod_revision"] for e in doc["events"]] == [2, 3]
    assert "prev_kv" not in doc["events"][0] and doc["events"][1]["prev_kv"]["value"] == "MQ=="

    h2 = Harness(store)

    async def script2(
        m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO
    ) -> None:
        await until(lambda: out.getvalue().count("\n") >= 5)
        main.cancel()

    assert h2.run(["watch", "k", "--rev", "3", "--prev-kv"], script2) == 0
    assert lines(h2.out) == ["PUT", "k", "1", "k", "2"]


def test_watch_compacted_is_an_error() -> None:
    store = Store()
    for i in range(4):
        store.apply(Request(Put(b"k", str(i).encode())))
    store.apply(Request(Compact(4)))
    h = Harness(store)
    assert h.run(["watch", "k", "--rev", "2"]) == 1
    assert "compacted" in h.err.getvalue() and "compact revision 4" in h.err.getvalue()
    assert h.run(["watch", "k", "--rev", "-1"]) == 1


def test_lease_grant_put_with_lease_and_keep_alive_until_lost() -> None:
    h = Harness()
    assert h.run(["lease", "grant", "9"]) == 0
    (line,) = lines(h.out)
    assert line.startswith("lease ") and line.endswith(" granted with TTL(9s)")
    hex_id = line.split()[1]
    assert len(hex_id) == 16
    lease_id = int(hex_id, 16)

    assert h.run(["put", "svc/i1", "addr", "--lease", hex_id]) == 0
    assert lines(h.out) == ["OK"]
    assert h.run(["get", "svc/i1", "-w", "json"]) == 0
    assert json.loads(h.out.getvalue())["kvs"][0]["lease"] == lease_id

    async def lose(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().count("\n") >= 1)  # the first, immediate renewal
        for _ in range(40):  # 10 s on the manual clock, in steps: renewed every ~3 s
            m.advance(0.25)
            await asyncio.sleep(0)
        await until(lambda: out.getvalue().count("\n") >= 3)
        m.set_unavailable(True)
        for _ in range(60):  # 15 s without an acknowledged renewal: lost after 9
            m.advance(0.25)
            await asyncio.sleep(0)

    assert h.run(["lease", "keep-alive", hex_id], lose) == 1
    assert lines(h.out)[0] == f"lease {hex_id} keepalived with TTL(9)"
    assert len(lines(h.out)) >= 3
    assert h.err.getvalue() == f"Error: lease {hex_id} expired or revoked\n"


def test_lease_keep_alive_ctrl_c_once_and_unknown() -> None:
    store = Store()
    store.apply(Request(LeaseGrant(0xABC, 6)))
    h = Harness(store)

    async def stop(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().endswith("\n"))
        main.cancel()

    assert h.run(["lease", "keep-alive", "abc", "-w", "json"], stop) == 0
    assert json.loads(lines(h.out)[0]) == {"ID": 0xABC, "TTL": 6}

    assert h.run(["lease", "keep-alive", "--once", "abc"]) == 0
    assert lines(h.out) == ["lease 0000000000000abc keepalived with TTL(6)"]

    assert h.run(["lease", "keep-alive", "def"]) == 1
    assert h.err.getvalue() == "Error: lease 0000000000000def expired or revoked\n"
    assert h.run(["lease", "keep-alive", "--once", "def"]) == 1
