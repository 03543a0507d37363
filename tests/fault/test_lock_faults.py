"""Locks under process faults, on raftreg (`ProcessCluster`) and on a real etcd (`EtcdCluster`).

- kill -9 of the process holding a lock (`raftreg lock NAME`, a real CLI process) frees the
  lock for the next waiter once its lease runs out: not before ~TTL - TTL/3 (its last renewal
  was at most TTL/3 + 10 % jitter before the kill), and within 2 x (TTL + the backend's expiry
  tick).
- Two holders never hold the lock at once, and their fencing tokens increase, while the
  cluster's leader is killed (and comes back) in the middle of their rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftreg.client import RegistryClient, connect
from raftreg.common.types import Put, Txn
from raftreg.concurrency import Lock, Session, SessionExpired
from raftreg.errors import OutcomeUnknown, RegistryError
from raftreg.server.lessor import TICK_S
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.procs import ProcessGroup

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The holder's session TTL. Renewals every TTL/3 leave each 2/3 of the TTL on a busy machine.
TTL = 4
# etcd's lessor looks for expired leases every 500 ms (a constant in etcd's lessor.go);
# raftreg's leader every `TICK_S`.
EXPIRY_TICK = {"raftreg": TICK_S, "etcd": 0.5}
# How long anything the cluster does "at once" may take before the test calls it a failure.
WAIT = 10.0


@dataclass
class Cluster:
    backend: str
    url: str
    group: ProcessCluster | EtcdCluster

    def leader(self) -> str:
        return self.group.wait_leader()

    def kill(self, name: str) -> None:
        self.group.kill(name)

    def restart(self, name: str) -> None:
        self.group.start(name)
        self.group.wait_leader()


@pytest.fixture(scope="module", params=["raftreg", "etcd"])
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp(f"lock-{request.param}")
    group: ProcessCluster | EtcdCluster
    if request.param == "raftreg":
        group = ProcessCluster(root / "cluster", min_lease_ttl=2)
    else:
        group = EtcdCluster(root / "cluster")
    with group:
        group.start()
        group.wait_leader()
        if isinstance(group, ProcessCluster):
            url = "raftreg://" + ",".join(group.endpoints)
        else:
            url = group.url
        yield Cluster(request.param, url, group)


async def until_keys(client: RegistryClient, prefix: str, n: int, timeout: float) -> None:
    """Until exactly `n` keys are under `prefix` (polled: the registry is the event source)."""
    deadline = time.monotonic() + timeout
    while (await client.get(prefix, prefix=True, count_only=True)).count != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"not {n} keys under {prefix} within {timeout:g}s")
        await asyncio.sleep(0.02)


async def test_kill_9_of_the_holder_process_frees_the_lock_within_its_ttl(
    cluster: Cluster, tmp_path: Path
) -> None:
    name = f"k9-{cluster.backend}"
    async with connect(cluster.url, timeout=3.0) as reg:
        with ProcessGroup(tmp_path / "holder") as procs:
            procs.spawn("holder", [sys.executable, "-m", "raftreg.cli", "--endpoints",
                                   cluster.url, "lock", "--ttl", str(TTL), name])
            await until_keys(reg, name + "/", 1, WAIT)
            (held,) = (await reg.get(name + "/", prefix=True)).kvs
            async with Session(reg, ttl=2 * TTL) as s:
                waiter = asyncio.create_task(Lock(s, name).acquire())
                await until_keys(reg, name + "/", 2, WAIT)
                assert not waiter.done()
                # the holder printed its key once it held the lock, as etcdctl does
                assert procs.log_text("holder").splitlines()[0] == held.key.decode()
                procs.kill("holder")
                killed = time.monotonic()
                bound = 2 * (TTL + EXPIRY_TICK[cluster.backend])
                token = await asyncio.wait_for(waiter, bound)
                freed_after = time.monotonic() - killed
        assert token > held.create_revision
        assert TTL / 2 <= freed_after <= bound, (freed_after, bound)


async def test_two_holders_never_overlap_while_the_leader_is_killed(cluster: Cluster) -> None:
    name, counter = f"overlap-{cluster.backend}", f"overlap-{cluster.backend}-n"
    intervals: list[tuple[float, float, int, bytes]] = []
    rounds = itertools.count(1)
    done_rounds = 0
    progressed = asyncio.Event()
    stop = asyncio.Event()
    ambiguous = 0

    async def worker() -> None:
        nonlocal done_rounds, ambiguous
        async with connect(cluster.url, timeout=3.0) as client:
            while not stop.is_set():
                try:
                    async with Session(client, ttl=2 * TTL) as s:
                        while not stop.is_set():
                            lock = Lock(s, name)
                            await lock.acquire()
                            start = time.monotonic()
                            try:
                                r = await client.txn(Txn(
                                    compare=(lock.owner_compare(),),
                                    success=(Put(counter.encode(), b"%d" % next(rounds)),)))
                                assert r.succeeded, "a holder's fenced write was refused"
                            except OutcomeUnknown:
                                ambiguous += 1
                            finally:
                                intervals.append(
                                    (start, time.monotonic(), lock.revision, lock.key))
                                with contextlib.suppress(RegistryError):
                                    await lock.release()
                            done_rounds += 1
                            progressed.set()
                except SessionExpired:
                    continue  # a new session; never expected with a TTL above a failover
                except RegistryError:
                    await asyncio.sleep(0.05)  # the cluster is electing: try again

    async def rounds_reach(n: int) -> None:
        while done_rounds < n:
            progressed.clear()
            await progressed.wait()

    workers = [asyncio.create_task(worker()) for _ in range(2)]
    try:
        await asyncio.wait_for(rounds_reach(10), 3 * WAIT)
        leader = await asyncio.to_thread(cluster.leader)
        cluster.kill(leader)
        before = done_rounds
        # a new leader is elected well within WAIT; every lease gets a fresh TTL there
        await asyncio.wait_for(rounds_reach(before + 10), 3 * WAIT)
        await asyncio.to_thread(cluster.restart, leader)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 2 * WAIT)
    finally:
        for w in workers:
            w.cancel()
    intervals.sort()
    assert len(intervals) >= 20
    for (_, end, tok, key), (start, _, next_tok, next_key) in itertools.pairwise(intervals):
        assert end <= start, f"two holders at once: {intervals}"
        # A release lost in the failover (its error is ignored above) leaves the key: the same
        # session's next acquire finds it and holds on with the same token, as etcd's Mutex
        # does; nobody held the lock in between. Any other holder's token is higher.
        assert tok < next_tok or (tok == next_tok and key == next_key), (
            f"fencing tokens did not increase: {intervals}")
    assert ambiguous <= len(intervals) // 2, ambiguous
