"""Live membership changes on real processes: grow 3 -> 4 and shrink back to 3 by removing the
leader, all under a write load; no acknowledged write is lost and every node converges."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
import time
from pathlib import Path

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.errors import AlreadyExists, NotFound, RegistryError
from raftreg.server.node import stable_id
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


async def cli(*args: str) -> str:
    """Run the real `raftreg` CLI; its stdout (a failure fails the test)."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftreg.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0, err.decode()
    return out.decode()


async def wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_grow_to_four_and_remove_the_leader_under_load(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c") as c:
        c.start()
        c.wait_leader()
        acked: dict[str, str] = {}
        stop = asyncio.Event()
        seq = itertools.count()
        async with GrpcRegistryClient(c.endpoints, timeout=10.0) as client:

            async def writer() -> None:
                while not stop.is_set():
                    i = next(seq)
                    try:
                        await client.put(f"load/{i}", str(i))
                    except RegistryError:
                        continue  # not acknowledged: may or may not be there
                    acked[f"load/{i}"] = str(i)

            writers = [asyncio.create_task(writer()) for _ in range(8)]
            await wait_until(lambda: len(acked) > 50, 20, "load did not start")

            # grow: member add, then start the new node with an empty data dir
            n4 = c.add_node()
            out = await cli("--endpoints", ",".join(c.endpoints), "member", "add", n4,
                            "--peer-urls", c.raft[n4], "--client-urls", c.client[n4])
            assert f"Member {stable_id(n4):x} added" in out and "--join" in out
            with pytest.raises(AlreadyExists):
                await client.member_add(n4, f"http://{c.raft[n4]}", f"http://{c.client[n4]}")
            c.start(n4, join=True)
            before = len(acked)
            await wait_until(lambda: len(acked) > before + 100, 30, "load stalled after add")
            st = c.wait_converged(timeout=30)
            assert st.header.revision > 0
            listed = await client.member_list()
            assert sorted(m.name for m in listed) == ["n1", "n2", "n3", n4]
            assert all(m.connected for m in listed)

            # shrink: remove the leader itself; it hands over, then leaves and stops
            leader = c.wait_leader()
            await client.member_remove(stable_id(leader))
            await wait_until(lambda: not c.alive(leader), 20, "removed leader kept running")
            assert "was removed from the cluster" in c.log_text(leader)
            c.forget_node(leader)
            new_leader = c.wait_leader()
            assert new_leader != leader
            before = len(acked)
            await wait_until(lambda: len(acked) > before + 100, 30, "load stalled after remove")
            with pytest.raises(NotFound):
                await client.member_remove(stable_id(leader))

            stop.set()
            await asyncio.gather(*writers)
            listed = await client.member_list()
            assert sorted(m.name for m in listed) == sorted(c.names)
            assert len(listed) == 3

        c.wait_converged(timeout=30)
        async with GrpcRegistryClient(c.endpoints) as client:
            got = await client.get("load/", prefix=True)
            have = {kv.key.decode(): kv.value.decode() for kv in got.kvs}
            missing = {k for k in acked if have.get(k) != acked[k]}
            assert not missing, f"{len(missing)} acknowledged writes lost"
            assert len(acked) > 300
            # a member restarted after the changes knows the new configuration
            c.restart(n4)
            c.wait_leader()
            assert sorted(m.name for m in await client.member_list()) == sorted(c.names)
        c.wait_converged(timeout=30)

        # replace a member under its own name: removed, data dir wiped, added again; it
        # replays its old removal record but must stay (the latest record says it is a member)
        async with GrpcRegistryClient(c.endpoints, timeout=10.0) as client:
            leader = c.wait_leader()
            victim = next(n for n in c.names if n != leader)
            await client.member_remove(stable_id(victim))
            await wait_until(lambda: not c.alive(victim), 20, "removed member kept running")
            shutil.rmtree(c.root / "data" / victim)
            await client.member_add(victim, c.raft[victim], c.client[victim])
            c.start(victim, join=True)
            await wait_until(
                lambda: c.status(victim) is not None and c.status(victim).header.revision > 1,
                20, "re-added member did not catch up")
            c.wait_converged(timeout=30)
            assert c.alive(victim), c.log_text(victim)[-2000:]
            listed = await client.member_list()
            assert sorted(m.name for m in listed) == sorted(c.names)
            assert all(m.connected for m in listed)
