"""Power cuts against real nodes: a node that syncs keeps every acknowledged write, a node with
syncing switched off (TEST ONLY `unsafe_no_sync`) is caught losing them, and a node whose
journal ends in a torn tail restarts by itself.

The power-cut file system (raftreg/testing/powercut/) decides what survives from the fsyncs
it saw, not from anything the node says; tests/fault/test_powercut.py tests it on its own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.testing import ProcessCluster
from raftreg.testing.faults import Schedule, Step, run_schedule
from raftreg.testing.powercut import fuse_available, mounts_under

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_WHY = fuse_available()
if _WHY is not None and not os.environ.get("CI"):
    pytestmark.append(pytest.mark.skip(reason=f"FUSE unavailable: {_WHY}"))

PUTS = 40


async def put_all(c: ProcessCluster, start: int, n: int) -> dict[str, int]:
    """n acknowledged puts, one after the other: key -> revision acknowledged."""
    acked = {}
    async with GrpcRegistryClient(c.endpoints, timeout=3.0, retry_budget=20.0) as cl:
        for i in range(start, start + n):
            acked[f"/pc/{i:04d}"] = (await cl.put(f"/pc/{i:04d}", f"v{i}")).revision
    return acked


async def present(c: ProcessCluster) -> set[str]:
    async with GrpcRegistryClient(c.endpoints, timeout=3.0, retry_budget=20.0) as cl:
        res = await cl.get("/pc/", range_end="/pc0")
    return {kv.key.decode() for kv in res.kvs}


def cut_all_and_restart(c: ProcessCluster, **kw: Any) -> dict[str, Any]:
    reports = c.power_cut(**kw)
    c.start()
    c.wait_leader(30)
    c.wait_converged(30)
    return reports


@pytest.mark.parametrize("no_sync", [False, True], ids=["syncing", "unsafe_no_sync"])
def test_acknowledged_writes_after_a_power_cut_of_every_node(tmp_path: Path,
                                                             no_sync: bool) -> None:
    with ProcessCluster(tmp_path / "c", faults=True, power_cuts=True) as c:
        c.start()
        c.wait_leader(30)
        if no_sync:
            for n in c.names:
                c.unsafe_no_sync(n)
        acked = asyncio.run(put_all(c, 0, PUTS))
        cut_all_and_restart(c)
        lost = set(acked) - asyncio.run(present(c))
        if no_sync:
            assert lost, "a cluster that never syncs must lose acknowledged writes"
        else:
            assert not lost, f"acknowledged writes lost by syncing nodes: {sorted(lost)[:5]}"
        # and the cluster goes on working
        more = asyncio.run(put_all(c, PUTS, 5))
        assert set(more) <= asyncio.run(present(c))
    assert mounts_under(tmp_path) == []


def test_schedule_runner_catches_a_node_that_does_not_sync(tmp_path: Path) -> None:
    schedule = Schedule(12, (Step("none", hold=1.5), Step("power_cut_all", hold=1.0)),
                        no_sync="all")
    res = run_schedule(schedule, tmp_path / "c")
    assert not res.ok
    assert any(v.startswith("acknowledged") and "not in the committed history" in v
               for v in res.violations), res.summary()
    assert mounts_under(tmp_path) == []


def test_a_node_restarts_by_itself_after_a_torn_tail(tmp_path: Path) -> None:
    # n3 does not sync, so its journal always has an unsynced tail: a torn cut keeps a random
    # part of it (a record cut short, sometimes zeros). The journal must drop that tail and the
    # node catch up from the others; the syncing majority keeps every acknowledged write.
    with ProcessCluster(tmp_path / "c", faults=True, power_cuts=True) as c:
        c.start()
        c.wait_leader(30)
        c.unsafe_no_sync("n3")
        acked: dict[str, int] = {}
        torn = []
        for seed in range(6):  # until a cut ends the journal inside a record
            acked |= asyncio.run(put_all(c, seed * 20, 20))
            report = c.power_cut("n3", torn=True, seed=seed)["n3"]
            wal = report["files"].get("/raft.wal")
            if wal is not None and wal["durable_size"] < wal["kept"]:
                torn.append(wal)
            c.start("n3")
            c.wait_converged(30)
            assert c.alive("n3"), c.log_text("n3")[-2000:]
            if "dropped a torn tail" in c.log_text("n3"):
                break
        assert torn, "no cut left a torn tail in n3's journal"
        assert "dropped a torn tail" in c.log_text("n3"), torn
        assert set(acked) <= asyncio.run(present(c))
    assert mounts_under(tmp_path) == []


def test_acknowledged_writes_survive_power_cuts_while_dumps_are_written(tmp_path: Path) -> None:
    # Every node writes a raft dump (on its dump thread) and compacts its log every 20 entries,
    # so each cut of all three nodes comes soon after dumps, or while one is being written: a
    # dump renamed before it was durable, or a log compacted before its dump was, loses writes.
    root = tmp_path / "c"
    with ProcessCluster(root, faults=True, power_cuts=True, snapshot_entries=20) as c:
        c.start()
        c.wait_leader(30)
        acked: dict[str, int] = {}
        for r in range(3):
            acked |= asyncio.run(put_all(c, r * 50, 50))
            cut_all_and_restart(c)
            lost = set(acked) - asyncio.run(present(c))
            assert not lost, f"round {r}: acknowledged writes lost: {sorted(lost)[:5]}"
        assert len(list(root.rglob("raft.dump"))) >= 3, "no dumps were written"
    assert mounts_under(tmp_path) == []
