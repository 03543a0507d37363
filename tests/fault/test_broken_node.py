"""A deliberately broken node (reads served locally, without the read barrier) is caught.

The same scenario runs twice: the leader is isolated from the other two nodes while one client
keeps writing through the majority and another keeps reading through the isolated node. With
the intact node the isolated reads fail (no quorum confirms them) and the history is
linearizable; with `unsafe_local_reads` the isolated node answers with a value the majority has
already overwritten, and the checker must say NOT linearizable. The generic schedule runner
must flag the broken node as well.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.testing import ProcessCluster
from raftreg.testing import lincheck as L
from raftreg.testing.faults import Schedule, Step, run_schedule
from raftreg.testing.history import REG, History

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def isolated_reads(c: ProcessCluster, node: str) -> History:
    h = History()
    rest = [n for n in c.names if n != node]
    writer = GrpcRegistryClient([c.client[n] for n in rest], timeout=1.0, retry_budget=5.0)
    # The first read happens before the isolation and must succeed: a generous client. The
    # isolated reads get a short budget: through the intact node they can only fail (no
    # quorum, whatever the wait), through the broken one they are answered at once.
    first_reader = GrpcRegistryClient([c.client[node]], timeout=5.0, retry_budget=10.0)
    reader = GrpcRegistryClient([c.client[node]], timeout=1.0, retry_budget=2.0)
    key = REG + "stale"

    async def put(v: str) -> None:
        op = h.invoke(0, "put", key, value=v)
        try:
            h.ok(op, None, (await writer.put(key, v)).revision)
        except Exception as e:
            h.failed(op, e)

    async def get(through: GrpcRegistryClient = reader) -> None:
        op = h.invoke(1, "get", key)
        try:
            res = await through.get(key)
            h.ok(op, res.kvs[0].value.decode() if res.kvs else None, res.revision)
        except Exception as e:
            h.failed(op, e)

    try:
        await put("v1")
        await get(first_reader)
        await asyncio.to_thread(c.isolate, node)
        await asyncio.to_thread(c.wait_leader, 20.0, rest)
        for i in range(2, 6):
            await put(f"v{i}")
            await get()
    finally:
        await writer.close()
        await first_reader.close()
        await reader.close()
    return h


def test_intact_node_is_linearizable(fcluster: ProcessCluster) -> None:
    leader = fcluster.wait_leader()
    h = asyncio.run(isolated_reads(fcluster, leader))
    reads = [op for op in h.ops if op.kind == "get"]
    assert reads[0].outcome == "ok" and reads[0].output == "v1"
    assert all(op.outcome == "fail" for op in reads[1:]), [op.output for op in reads]
    res = L.check(L.KVModel(), h.lincheck_ops())
    assert res.ok is True, res.explain()


def test_broken_node_is_caught(fcluster: ProcessCluster) -> None:
    leader = fcluster.wait_leader()
    fcluster.unsafe_local_reads(leader)
    h = asyncio.run(isolated_reads(fcluster, leader))
    stale = [op for op in h.ops if op.kind == "get" and op.outcome == "ok" and op.output == "v1"]
    assert len(stale) > 1, "the broken node should have served the old value"
    res = L.check(L.KVModel(), h.lincheck_ops())
    assert res.ok is False, "the checker missed a stale read"
    assert "NOT linearizable" in res.explain()


def test_schedule_runner_flags_broken_node(tmp_path: Path) -> None:
    # 6 s: the re-election (0.4-0.8 s election timeout, more on a loaded machine) and then
    # enough reads through the isolated broken node to hit the overwritten value.
    schedule = Schedule(7, (Step("isolate", "n1", hold=6.0),), broken="n1")
    res = run_schedule(schedule, tmp_path / "c")
    assert not res.ok
    assert any("not linearizable" in v for v in res.violations), res.summary()
