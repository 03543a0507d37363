"""`raftreg lock` and `raftreg elect` over the in-memory client, in-process (no CMD: running a
command starts a process; see tests/contract/test_concurrency.py for `lock -- CMD`).

The client factory runs on the command's own loop and starts a small script task that plays
the other participants, moves the manual lease clock and finally "presses Ctrl-C" by
cancelling the command's task, exactly what asyncio.run does on SIGINT."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import Put, Range
from raftreg.concurrency import Election, Session
from raftreg.store.commands import LeaseGrant, Request
from tests.cli_harness import CliHarness

pytestmark = pytest.mark.timeout(20)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


def keys(h: CliHarness, prefix: bytes) -> list[bytes]:
    return [kv.key for kv in h.store.range(Range(prefix, prefix_range_end(prefix))).kvs]


def test_lock_prints_its_key_holds_until_ctrl_c_and_then_lets_go() -> None:
    h = CliHarness()
    seen: list[bytes] = []

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().endswith("\n"))
        seen.extend(keys(h, b"jobs/"))
        main.cancel()

    assert h("lock", "jobs", script=script)[0] == 0
    (line,) = h.out.getvalue().splitlines()
    assert seen == [line.encode()] and line.startswith("jobs/")
    assert keys(h, b"jobs/") == [] and h.err.getvalue() == ""


def test_lock_waits_for_the_holder_and_ctrl_c_while_waiting_leaves_no_key() -> None:
    h = CliHarness()
    # another process holds the lock already: its key, under its lease, heads the queue
    h.store.apply(Request(LeaseGrant(0xABC, 30)))
    h.store.apply(Request(Put(b"jobs/abc", b"", lease=0xABC)))

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: len(keys(h, b"jobs/")) == 2)  # the command waits behind it
        main.cancel()

    assert h("lock", "jobs", script=script)[0] == 0
    assert h.out.getvalue() == "" and keys(h, b"jobs/") == [b"jobs/abc"]


def test_lock_exits_1_when_its_lease_is_lost() -> None:
    h = CliHarness()

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().endswith("\n"))
        (kv,) = (await m.get("jobs/", prefix=True)).kvs
        await m.lease_revoke(kv.lease)  # e.g. expired while the network was away
        while not main.done():  # the keeper learns it at its next renewal (ttl/3)
            m.advance(0.5)
            await asyncio.sleep(0.001)

    assert h("lock", "--ttl", "3", "jobs", "-w", "json", script=script)[0] == 1
    doc = json.loads(h.out.getvalue())
    assert doc["create_revision"] > 0 and doc["lease"] > 0
    assert "was lost" in h.err.getvalue()


def test_elect_without_proposal_prints_each_leader() -> None:
    h = CliHarness()

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        async with Session(m, ttl=10) as s1, Session(m, ttl=10) as s2:
            alice, bob = Election(s1, "boss"), Election(s2, "boss")
            await alice.campaign("alice")
            await until(lambda: out.getvalue().count("\n") == 2)
            t = asyncio.create_task(bob.campaign("bob"))
            await until(lambda: len(keys(h, b"boss/")) == 2)  # bob waits: nothing printed
            await alice.proclaim("alice-2")
            await alice.resign()
            await t
            await until(lambda: out.getvalue().count("\n") == 6)
            main.cancel()

    assert h("elect", "boss", script=script)[0] == 0
    out = h.out.getvalue().splitlines()
    assert out[1::2] == ["alice", "alice-2", "bob"] and all(k.startswith("boss/") for k in out[::2])


def test_elect_with_a_proposal_leads_until_ctrl_c_then_resigns() -> None:
    h = CliHarness()

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().count("\n") == 2)
        kv = (await m.get("boss/", prefix=True)).kvs[0]
        assert kv.value == b"me"
        main.cancel()

    assert h("elect", "boss", "me", script=script)[0] == 0
    key, value = h.out.getvalue().splitlines()
    assert key.startswith("boss/") and value == "me" and keys(h, b"boss/") == []
