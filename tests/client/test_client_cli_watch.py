"""`raftreg watch`, `raftreg lease keep-alive`, `lease grant` and `put --lease` over the in-memory
client. The client factory runs on the command's own loop, so it also starts a small script task
that writes, advances the manual clock, and finally "presses Ctrl-C" by cancelling the command's
task, exactly what asyncio.run does on SIGINT."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.common.types import Put
from raftreg.store import Store
from raftreg.store.commands import Compact, LeaseGrant, Request
from tests.cli_harness import CliHarness

pytestmark = pytest.mark.timeout(20)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


def lines(s: io.StringIO) -> list[str]:
    return s.getvalue().splitlines()


def test_watch_prints_events_until_ctrl_c() -> None:
    h = CliHarness()

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: m.watch_count == 1)
        await m.put("svc/a", "1")
        await m.put("other", "x")
        await m.delete("svc/a")
        await until(lambda: out.getvalue().count("\n") >= 6)
        main.cancel()  # Ctrl-C

    assert h("watch", "svc/", "--prefix", script=script)[0] == 0
    assert lines(h.out) == ["PUT", "svc/a", "1", "DELETE", "svc/a", ""]
    assert h.err.getvalue() == ""


def test_watch_from_a_revision_with_prev_kv_as_json() -> None:
    store = Store()
    store.apply(Request(Put(b"k", b"1")))  # rev 2
    store.apply(Request(Put(b"k", b"2")))  # rev 3
    h = CliHarness(store)

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().count("\n") >= 1)
        main.cancel()

    assert h("watch", "k", "--rev", "2", "--prev-kv", "-w", "json", script=script)[0] == 0
    (doc,) = [json.loads(x) for x in lines(h.out)]
    assert doc["header"]["revision"] == 3
    assert [e["type"] for e in doc["events"]] == ["PUT", "PUT"]
    assert [e["kv"]["mod_revision"] for e in doc["events"]] == [2, 3]
    assert "prev_kv" not in doc["events"][0] and doc["events"][1]["prev_kv"]["value"] == "MQ=="

    h2 = CliHarness(store)

    async def script2(
        m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO
    ) -> None:
        await until(lambda: out.getvalue().count("\n") >= 5)
        main.cancel()

    assert h2("watch", "k", "--rev", "3", "--prev-kv", script=script2)[0] == 0
    assert lines(h2.out) == ["PUT", "k", "1", "k", "2"]


def test_watch_compacted_is_an_error() -> None:
    store = Store()
    for i in range(4):
        store.apply(Request(Put(b"k", str(i).encode())))
    store.apply(Request(Compact(4)))
    h = CliHarness(store)
    assert h("watch", "k", "--rev", "2")[0] == 1
    assert "compacted" in h.err.getvalue() and "compact revision 4" in h.err.getvalue()
    assert h("watch", "k", "--rev", "-1")[0] == 1


def test_lease_grant_put_with_lease_and_keep_alive_until_lost() -> None:
    h = CliHarness()
    assert h("lease", "grant", "9")[0] == 0
    (line,) = lines(h.out)
    assert line.startswith("lease ") and line.endswith(" granted with TTL(9s)")
    hex_id = line.split()[1]
    assert len(hex_id) == 16
    lease_id = int(hex_id, 16)

    assert h("put", "svc/i1", "addr", "--lease", hex_id)[0] == 0
    assert lines(h.out) == ["OK"]
    assert h("get", "svc/i1", "-w", "json")[0] == 0
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

    assert h("lease", "keep-alive", hex_id, script=lose)[0] == 1
    assert lines(h.out)[0] == f"lease {hex_id} keepalived with TTL(9)"
    assert len(lines(h.out)) >= 3
    assert h.err.getvalue() == f"Error: lease {hex_id} expired or revoked\n"


def test_lease_keep_alive_ctrl_c_once_and_unknown() -> None:
    store = Store()
    store.apply(Request(LeaseGrant(0xABC, 6)))
    h = CliHarness(store)

    async def stop(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().endswith("\n"))
        main.cancel()

    assert h("lease", "keep-alive", "abc", "-w", "json", script=stop)[0] == 0
    assert json.loads(lines(h.out)[0]) == {"ID": 0xABC, "TTL": 6}

    assert h("lease", "keep-alive", "--once", "abc")[0] == 0
    assert lines(h.out) == ["lease 0000000000000abc keepalived with TTL(6)"]

    assert h("lease", "keep-alive", "def")[0] == 1
    assert h.err.getvalue() == "Error: lease 0000000000000def expired or revoked\n"
    assert h("lease", "keep-alive", "--once", "def")[0] == 1
