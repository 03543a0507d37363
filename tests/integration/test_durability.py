"""Failover and durability on real processes: leader kill -9 under load, whole-cluster kill -9
and restart, and a node that was down catching up."""

from __future__ import annotations

import asyncio
import time

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.errors import RegistryError
from raftreg.testing import ProcessCluster

pytestmark = pytest.mark.slow


async def _write_load(
    client: GrpcRegistryClient, prefix: str, acked: dict[str, str], stop: asyncio.Event,
    workers: int = 4,
) -> None:
    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"{prefix}/{w}/{i}", f"v{i}"
            try:
                await client.put(key, value)
                acked[key] = value
            except RegistryError:
                pass  # not acknowledged (or outcome unknown): no claim either way
            i += 1

    await asyncio.gather(*(worker(w) for w in range(workers)))


async def _assert_all_present(client: GrpcRegistryClient, prefix: str,
                              acked: dict[str, str]) -> None:
    got = await client.get(prefix + "/", prefix=True)
    have = {kv.key.decode(): kv.value.decode() for kv in got.kvs}
    missing = {k for k in acked if have.get(k) != acked[k]}
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"


async def test_leader_kill_under_load_loses_no_acknowledged_write(
    cluster: ProcessCluster,
) -> None:
    acked: dict[str, str] = {}
    stop = asyncio.Event()
    async with GrpcRegistryClient(cluster.endpoints, timeout=3.0) as client:
        load = asyncio.create_task(_write_load(client, "fo", acked, stop))
        deadline = time.monotonic() + 20
        while len(acked) < 200:
            assert time.monotonic() < deadline, "the load never got going"
            await asyncio.sleep(0.01)
        leader = cluster.wait_leader()
        before_kill = len(acked)
        cluster.kill(leader)
        t_kill = time.monotonic()
        # Writes resume through the client's failover, without anyone telling it where to go
        # (an election takes under a second; 20 s only bounds the wait).
        while len(acked) < before_kill + 200:
            assert time.monotonic() - t_kill < 20, "writes did not resume after the leader died"
            await asyncio.sleep(0.01)
        stop.set()
        await load
        survivors = [n for n in cluster.names if n != leader]
        assert cluster.wait_leader(among=survivors) != leader
        await _assert_all_present(client, "fo", acked)
    # The old leader comes back as a follower and catches up.
    cluster.start(leader)
    cluster.wait_leader()
    cluster.wait_converged(timeout=30)


async def test_whole_cluster_kill_and_restart_keeps_every_acknowledged_write(
    cluster: ProcessCluster,
) -> None:
    acked: dict[str, str] = {}
    stop = asyncio.Event()
    async with GrpcRegistryClient(cluster.endpoints, timeout=3.0) as client:
        load = asyncio.create_task(_write_load(client, "dur", acked, stop))
        deadline = time.monotonic() + 20
        while len(acked) < 300:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        rev_before = (await client.get("dur/", prefix=True, count_only=True)).revision
        for n in cluster.names:  # all at once, mid-load
            cluster.kill(n)
        stop.set()
        await load
    cluster.start()
    cluster.wait_leader(timeout=30)
    async with GrpcRegistryClient(cluster.endpoints, timeout=5.0) as client:
        after = await client.get("dur/", prefix=True, count_only=True)
        assert after.revision >= rev_before
        await _assert_all_present(client, "dur", acked)
    cluster.wait_converged(timeout=30)


async def test_a_node_that_was_down_catches_up(cluster: ProcessCluster) -> None:
    leader = cluster.wait_leader()
    down = next(n for n in cluster.names if n != leader)
    cluster.kill(down)
    up = [n for n in cluster.names if n != down]
    async with GrpcRegistryClient([cluster.client[n] for n in up], timeout=3.0) as client:
        for i in range(300):
            await client.put(f"catch/{i}", str(i))
        last = (await client.get("catch/", prefix=True, count_only=True)).revision
    cluster.start(down)
    deadline = time.monotonic() + 30
    async with GrpcRegistryClient([cluster.client[down]], timeout=3.0) as only_down:
        while True:
            res = await only_down.get("catch/", prefix=True, serializable=True, count_only=True)
            if res.count == 300 and res.revision >= last:
                break
            assert time.monotonic() < deadline, f"caught up to {res.count}/300 only"
            await asyncio.sleep(0.05)
    cluster.wait_converged(timeout=30)


@pytest.mark.parametrize("snapshot_entries", [200])
async def test_restart_from_snapshot_and_journal(tmp_path: object, snapshot_entries: int) -> None:
    """Log compaction writes a msgpack dump; a restart restores from it plus the journal."""
    from pathlib import Path

    root = Path(str(tmp_path)) / "snap"
    with ProcessCluster(root, snapshot_entries=snapshot_entries) as c:
        c.start()
        c.wait_leader()
        async with GrpcRegistryClient(c.endpoints, timeout=3.0) as client:
            for i in range(3 * snapshot_entries):
                await client.put(f"snap/{i % 50}", str(i))
            want = {kv.key: kv.value for kv in (await client.get("snap/", prefix=True)).kvs}
            rev = (await client.get("snap/", prefix=True, count_only=True)).revision
        dumps = list(root.glob("data/*/raft.dump"))
        assert dumps, "no snapshot was written"
        assert all(not d.read_bytes().startswith(b"\x80") for d in dumps), "dump is pickle"
        for n in c.names:
            c.kill(n)
        c.start()
        c.wait_leader(timeout=30)
        async with GrpcRegistryClient(c.endpoints, timeout=5.0) as client:
            got = await client.get("snap/", prefix=True)
            assert {kv.key: kv.value for kv in got.kvs} == want
            assert got.revision >= rev
        c.wait_converged(timeout=30)


async def test_damaged_or_old_format_logs_stop_the_node_with_a_clear_message(
    tmp_path: object,
) -> None:
    """A raft log damaged after it was synced (a bad record followed by valid ones) and a data
    dir in PySyncObj's old journal format are refused at start, naming what to do."""
    from pathlib import Path

    from raftreg.consensus.journal import WAL_NAME, scan_wal

    root = Path(str(tmp_path)) / "refuse"
    with ProcessCluster(root) as c:
        c.start()
        c.wait_leader()
        async with GrpcRegistryClient(c.endpoints, timeout=3.0) as client:
            for i in range(30):
                await client.put(f"refuse/{i}", str(i))
        damaged, old = c.names[0], c.names[1]
        c.kill(damaged)
        c.kill(old)
        wal = root / "data" / damaged / WAL_NAME
        _, offsets, _, _ = scan_wal(wal)
        data = bytearray(wal.read_bytes())
        data[offsets[2] + 30] ^= 0xFF  # an early record; later writes follow it
        wal.write_bytes(bytes(data))
        (root / "data" / old / "raft.journal").write_bytes(b"\0" * 64)
        c.start(damaged, old)
        for n in (damaged, old):
            assert c.procs[n].wait(timeout=30) != 0, f"{n} started anyway"
        log_damaged, log_old = c.log_text(damaged), c.log_text(old)
    assert f"{wal}: corrupt record at offset {offsets[2]}" in log_damaged
    assert "raft.journal" in log_old and "snapshot restore" in log_old
