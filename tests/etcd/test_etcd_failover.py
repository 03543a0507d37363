"""The etcd adapter across member and leader failures on a real three-node etcd, and the CLI
run unchanged against etcd. Every wait is bounded; the fixture SIGKILLs every etcd it started."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftreg.cli import run
from raftreg.client import connect
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.errors import OutcomeUnknown, RegistryError
from raftreg.testing.etcd import EtcdCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd") as c:
        c.start()
        c.wait_leader()
        yield c


async def test_reads_and_writes_carry_on_across_a_leader_kill(etcd: EtcdCluster) -> None:
    async with EtcdRegistryClient(etcd.endpoints, timeout=2.0) as client:
        leader = await asyncio.to_thread(etcd.wait_leader)
        await client.put("fo/k", "0")
        acked: list[int] = []
        unknown = 0
        reads = 0
        stop = asyncio.Event()

        async def write() -> None:
            nonlocal unknown
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await client.put("fo/k", str(i))
                    acked.append(i)
                except OutcomeUnknown:
                    unknown += 1
                await asyncio.sleep(0.01)

        async def read() -> None:
            nonlocal reads
            while not stop.is_set():
                await client.get("fo/k")  # linearizable: must not fail across the failover
                reads += 1
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(etcd.kill, leader)
        new = await asyncio.to_thread(etcd.wait_leader, 20.0, exclude=leader)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)  # any error other than OutcomeUnknown fails the test
        assert new != leader and reads > 20 and len(acked) > 20
        (kv,) = (await client.get("fo/k")).kvs
        assert int(kv.value) >= acked[-1]
        etcd.start(leader)


async def test_a_write_with_an_ambiguous_failure_is_outcome_unknown_not_retried(
    etcd: EtcdCluster,
) -> None:
    # A per-attempt deadline far below etcd's commit latency: the put may or may not be
    # applied. The adapter must say OutcomeUnknown at once (a retry could apply it twice).
    async with EtcdRegistryClient(etcd.endpoints, timeout=0.0002, retry_budget=1.0) as c:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(OutcomeUnknown):
            for i in range(50):
                await c.put("amb/k", str(i))
        assert loop.time() - start < 0.9  # not retried until the budget ran out


async def test_a_watch_resumes_without_gap_or_duplicate_when_its_member_dies(
    etcd: EtcdCluster,
) -> None:
    async with (
        EtcdRegistryClient(etcd.endpoints, timeout=2.0) as watcher,
        EtcdRegistryClient(etcd.endpoints, timeout=2.0) as writer,
    ):
        w = await watcher.watch("wr/", prefix=True)
        victim = next(n for n in etcd.names if etcd.client[n] == watcher.watch_endpoint)
        revs = [(await writer.put(f"wr/{i}", "x")).revision for i in range(20)]
        await asyncio.to_thread(etcd.kill, victim)
        await asyncio.to_thread(etcd.wait_leader, 20.0, exclude=victim)
        for i in range(20, 40):
            while True:
                try:
                    revs.append((await writer.put(f"wr/{i}", "x")).revision)
                    break
                except OutcomeUnknown:
                    pass  # retried as a new write below; the check only counts acked ones
        got: list[int] = []
        while not set(revs) <= set(got):
            b = await asyncio.wait_for(w.__anext__(), 15)
            got.extend(e.kv.mod_revision for e in b.events)
        assert got == sorted(set(got)), "duplicate or out of order"
        assert watcher.watch_endpoint != etcd.client[victim]
        w.cancel()
        etcd.start(victim)


async def test_the_keeper_keeps_a_lease_alive_across_a_leader_kill(etcd: EtcdCluster) -> None:
    async with EtcdRegistryClient(etcd.endpoints, timeout=2.0) as client:
        leader = await asyncio.to_thread(etcd.wait_leader)
        lost: list[int] = []
        lid = await client.keepalive_manager().grant_and_keep(3, lost.append)
        await client.put("ka/k", "v", lease=lid)
        await asyncio.to_thread(etcd.kill, leader)
        await asyncio.to_thread(etcd.wait_leader, 20.0, exclude=leader)
        await asyncio.sleep(5)
        assert lost == []
        assert (await client.get("ka/k")).count == 1
        etcd.start(leader)


def test_the_cli_runs_unchanged_against_etcd(
    etcd: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cli(*args: str) -> str:
        out = io.StringIO()
        assert run(list(args), stdout=out, stderr=out) == 0, out.getvalue()
        return out.getvalue()

    assert cli("--endpoints", etcd.url, "put", "cli/k", "v1") == "OK\n"
    assert cli("--endpoints", etcd.url, "get", "cli/k") == "cli/k\nv1\n"
    members = cli("--endpoints", etcd.url, "member", "list")
    assert all(n in members for n in etcd.names)
    assert "3.5.1" in cli("--endpoints", etcd.url, "endpoint", "status", "-w", "table")
    # the same through the [registry] table, and through the environment
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'[registry]\nbackend = "etcd"\nendpoints = {etcd.endpoints!r}\n'
                   .replace("'", '"'))
    assert cli("--config", str(cfg), "get", "cli/k", "--print-value-only") == "v1\n"
    monkeypatch.setenv("RAFTREG_BACKEND", "etcd")
    assert cli("--endpoints", ",".join(etcd.endpoints), "endpoint", "health").count(
        "is healthy") == 3


async def test_connect_reaches_etcd_through_the_environment(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAFTREG_BACKEND", "etcd")
    monkeypatch.setenv("RAFTREG_ENDPOINTS", ",".join(etcd.endpoints))
    async with connect(config_path=tmp_path / "none.toml") as c:
        assert isinstance(c, EtcdRegistryClient)
        await c.put("env/k", "v")
        assert (await c.get("env/k")).kvs[0].value == b"v"


async def test_errors_are_raftreg_errors_when_no_member_answers(tmp_path: Path) -> None:
    async with EtcdRegistryClient(["127.0.0.1:1"], timeout=0.3, connect_timeout=0.2) as c:
        with pytest.raises(RegistryError):
            await c.get("x")
