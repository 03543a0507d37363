"""The gRPC client's watches and lease keeper against a real three-node cluster (node
processes on loopback, `raftreg.testing.ProcessCluster`), including kill -9 of the node a watch
is connected to and of the leader while a lease is kept alive.

Blocking cluster helpers run in a thread; every wait is bounded; the `cluster` fixture stops
every process it started."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from raftreg.client import GrpcRegistryClient, WatchBatch
from raftreg.common.types import EventType, Put, Txn
from raftreg.errors import OutcomeUnknown, RegistryError
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_a_watch_on_one_node_sees_a_put_made_through_another(
    cluster: ProcessCluster,
) -> None:
    async with (
        GrpcRegistryClient([cluster.client["n1"]]) as a,
        GrpcRegistryClient([cluster.client["n2"]]) as b,
    ):
        w = await a.watch("live/", prefix=True, prev_kv=True)
        assert a.watch_endpoint == cluster.client["n1"]
        await b.put("live/x", "1")
        r = await b.put("live/x", "2")
        got: list[WatchBatch] = []
        while sum(len(x.events) for x in got) < 2:
            got.append(await asyncio.wait_for(w.__anext__(), 10))
        events = [e for x in got for e in x.events]
        assert [e.kv.value for e in events] == [b"1", b"2"]
        assert events[-1].kv.mod_revision == r.revision
        assert events[-1].prev_kv is not None and events[-1].prev_kv.value == b"1"
        w.cancel()


async def test_a_watch_resumes_without_gap_or_duplicate_across_kill_9(
    cluster: ProcessCluster,
) -> None:
    async with (
        GrpcRegistryClient(cluster.endpoints, timeout=2.0) as watcher,
        GrpcRegistryClient(cluster.endpoints, timeout=2.0) as writer,
    ):
        w = await watcher.watch("resume/", prefix=True)
        victim_ep = watcher.watch_endpoint
        assert victim_ep is not None
        victim = next(n for n in cluster.names if cluster.client[n] == victim_ep)

        acked: list[int] = []
        unknown = 0
        stop = asyncio.Event()
        delivered: list[int] = []
        foreign: list[bytes] = []

        async def write() -> None:
            nonlocal unknown
            i = 0
            while not stop.is_set():
                try:
                    acked.append((await writer.put(f"resume/{i:06d}", str(i))).revision)
                except OutcomeUnknown:
                    unknown += 1
                except RegistryError:
                    pass  # refused before it was applied: not a change
                i += 1

        async def read() -> None:
            async for batch in w:
                for e in batch.events:
                    delivered.append(e.kv.mod_revision)
                    if e.type != EventType.PUT or not e.kv.key.startswith(b"resume/"):
                        foreign.append(e.kv.key)

        writer_task = asyncio.create_task(write())
        reader_task = asyncio.create_task(read())
        try:
            await until(lambda: len(acked) >= 30, 20, "30 acknowledged writes")
            await asyncio.to_thread(cluster.kill, victim)
            before = len(acked)
            await until(
                lambda: watcher.watch_endpoint not in (None, victim_ep)
                and len(acked) >= before + 30,
                40,
                "the watch on another node and 30 more writes",
            )
            stop.set()
            await asyncio.wait_for(writer_task, 30)
            final = max(acked)
            await until(lambda: bool(delivered) and delivered[-1] >= final, 30, "the last write")
        finally:
            stop.set()
            writer_task.cancel()
            reader_task.cancel()
            await asyncio.gather(writer_task, reader_task, return_exceptions=True)

        assert watcher.watch_streams_opened >= 2
        assert foreign == []
        assert delivered == sorted(set(delivered)), "duplicate or out-of-order revision"
        missing = sorted(set(acked) - set(delivered))
        assert missing == [], f"gap: acknowledged writes never delivered: {missing[:10]}"
        # Anything else delivered must be a write whose outcome the writer did not learn.
        assert len(delivered) - len(acked) <= unknown


async def test_the_keeper_keeps_a_3s_lease_alive_across_a_leader_kill_9(
    cluster: ProcessCluster,
) -> None:
    leader = await asyncio.to_thread(cluster.wait_leader)
    async with GrpcRegistryClient(cluster.endpoints, timeout=2.0) as client:
        keeper = client.keepalive_manager()
        lost: list[int] = []
        lease_id = await keeper.grant_and_keep(3, lost.append)
        await client.put("lease/i1", "addr", lease=lease_id)
        await until(lambda: keeper.renewals >= 2, 10, "two renewals")
        await asyncio.to_thread(cluster.kill, leader)
        survivors = [n for n in cluster.names if n != leader]
        await asyncio.to_thread(cluster.wait_leader, 20.0, survivors)
        # Keep going well past two TTLs after the kill.
        target = keeper.renewals + 7
        await until(lambda: keeper.renewals >= target or bool(lost), 30, "seven more renewals")
        assert lost == []
        ttl = await client.lease_time_to_live(lease_id, keys=True)
        assert ttl.ttl > 0 and ttl.keys == (b"lease/i1",)
        assert (await client.get("lease/i1")).kvs
        assert lease_id in keeper.kept()


_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'raftreg'; runpy.run_module('raftreg.cli', run_name='__main__')"
)


async def test_cli_watch_prints_events_and_exits_0_on_ctrl_c(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    async with GrpcRegistryClient(cluster.endpoints) as c:
        r = await c.put("cli/k", "hello")
    # stderr goes to a file: an undrained pipe could fill up and block the CLI's exit.
    err_path = tmp_path / "cli.stderr"
    with open(err_path, "wb") as err:
        # A test run started in the background by a non-interactive shell inherits SIGINT as
        # ignored, and so would the CLI: give it the default Ctrl-C behaviour explicitly.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WITH_CTRL_C, "watch", "cli/", "--prefix",
            "--rev", str(r.revision), "--endpoints", ",".join(cluster.endpoints),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        assert proc.stdout is not None
        got = [
            (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().rstrip("\n")
            for _ in range(3)
        ]
        assert got == ["PUT", "cli/k", "hello"]
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 20)
        assert rc == 0, err_path.read_text(errors="replace")[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- write flow control against a server with a small request-identity window ------------------

SMALL_WINDOW = 8


@pytest.fixture
def small_window_node(tmp_path: Path) -> Iterator[ProcessCluster]:
    """One node whose store remembers only the last SMALL_WINDOW results per client."""
    with ProcessCluster(tmp_path / "c", size=1, client_window=SMALL_WINDOW) as c:
        c.start()
        c.wait_leader()
        yield c


class HoldingClient(GrpcRegistryClient):
    """Holds back the KV write with seq 1 (a stand-in for one slow write: an answer lost and
    retried, a stalled connection) until every later write it sent was answered, and at least
    window - 1 of them were (as many as may go before seq 1 ends)."""

    def __init__(self, *args: Any, window: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.window = window
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.sent = self.answered = 0

    async def _kv_op(self, c: Any, timeout: float, unary: Any, op: Any) -> Message:
        kind = op.WhichOneof("request")
        if kind == "range":
            return await super()._kv_op(c, timeout, unary, op)
        if getattr(op, kind).request_id.seq == 1:
            self.holding.set()
            await self.release.wait()
            return await super()._kv_op(c, timeout, unary, op)
        self.sent += 1
        try:
            return await super()._kv_op(c, timeout, unary, op)
        finally:
            self.answered += 1
            if self.answered == self.sent >= self.window - 1:
                self.release.set()


async def test_many_writes_beyond_the_servers_window_are_never_refused_as_too_old(
    small_window_node: ProcessCluster,
) -> None:
    """The server remembers 8 results per client. One write is held back while 120 later
    writes of the same client are issued: without flow control they are all applied first, so
    the held one arrives 120 seqs behind and is refused ("request id too old"); with it, the
    later writes wait until the held one is answered."""
    eps = small_window_node.endpoints
    n = 120
    async with HoldingClient(eps, write_window=SMALL_WINDOW, window=SMALL_WINDOW) as c:
        await c.status()  # connected, so the later writes go out at once
        held = asyncio.create_task(c.put("flow/held", "1"))
        await asyncio.wait_for(c.holding.wait(), 10)

        async def write(i: int) -> object:
            if i % 3 == 0:
                return await c.put(f"flow/{i}", str(i))
            if i % 3 == 1:
                return await c.txn(Txn(success=(Put(f"flow/{i}".encode(), b"t"),)))
            return await c.delete(f"flow/{i - 1}")

        later = [asyncio.create_task(write(i)) for i in range(n)]
        results = await asyncio.wait_for(
            asyncio.gather(held, *later, return_exceptions=True), 60
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed == [], f"{len(failed)} writes failed, e.g. {failed[0]!r}"
        assert c.sent == n and c.seq_window.unfinished == 0
        assert (await c.get("flow/held")).kvs[0].value == b"1"

    # And plainly: a burst of concurrent writes, many times the window, all succeed.
    async with GrpcRegistryClient(eps, write_window=SMALL_WINDOW) as plain:
        burst = [plain.put(f"burst/{i}", "v") for i in range(400)]
        results = await asyncio.wait_for(asyncio.gather(*burst, return_exceptions=True), 60)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert (await plain.get("burst/", prefix=True, count_only=True)).count == 400
