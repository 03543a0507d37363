"""Locks and elections (`raftreg.concurrency`): one contract for every backend (see conftest).

Every participant that must be independent has a client of its own (as separate processes
would) on the process backends; on memory they share `registry` (the memory client's watches
and leases live in the client object) and are independent through their sessions (leases).
Waits are on the recipes' own events (an acquire returning, a key appearing) bounded by `WAIT`;
lease-related bounds come from the session TTL with 2x room."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from raftreg.cli import run
from raftreg.client import RegistryClient, connect
from raftreg.common.types import Put, Txn
from raftreg.concurrency import Election, Lock, NotLeader, Session, SessionExpired, observe
from raftreg.testing.etcd import etcd_binary
from raftreg.testing.procs import ProcessGroup
from tests.contract.conftest import WAIT, Backend, eventually, process_only

pytestmark = pytest.mark.slow
# Sessions renew every TTL/3; 4 s leaves each renewal 2/3 of the TTL on a loaded machine (as in
# test_lease.py's KEPT_TTL).
TTL = 4


@pytest.fixture
async def new_client(
    backend: Backend, registry: RegistryClient
) -> AsyncIterator[Callable[[], RegistryClient]]:
    """Makes more clients of `backend` (one per independent participant), all closed after.
    On memory it gives `registry` itself: a second `MemoryRegistryClient` would not see the
    first one's writes in its watches (see conftest)."""
    made: list[RegistryClient] = []

    def make() -> RegistryClient:
        if backend.name == "memory":
            return registry
        c = connect(backend.url, timeout=3.0)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def waiting(registry: RegistryClient, prefix: str, n: int) -> None:
    """Until `n` keys are queued under `prefix`."""
    async def enough() -> bool:
        return (await registry.get(prefix, prefix=True, count_only=True)).count >= n

    await eventually(enough, f"{n} keys under {prefix}")


async def test_holders_exclude_each_other_and_fenced_writes_all_land(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name, counter = prefix + "lock", prefix + "counter"
    await registry.put(counter, "0")
    intervals: list[tuple[float, float, int]] = []
    rounds = 4

    async def worker() -> None:
        async with Session(new_client(), ttl=TTL) as s:
            for _ in range(rounds):
                async with Lock(s, name) as lock:
                    start = time.monotonic()
                    # read-modify-write protected by the lock alone, fenced by its token
                    n = int((await s.client.get(counter)).kvs[0].value)
                    r = await s.client.txn(Txn(compare=(lock.owner_compare(),),
                                               success=(Put(counter.encode(), b"%d" % (n + 1)),)))
                    assert r.succeeded
                    intervals.append((start, time.monotonic(), lock.revision))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(3))), 6 * WAIT)
    intervals.sort()
    for (_, end, tok), (start, _, next_tok) in itertools.pairwise(intervals):
        assert end <= start, f"two holders at once: {intervals}"
        assert tok < next_tok, f"fencing tokens did not increase: {intervals}"
    assert (await registry.get(counter)).kvs[0].value == b"%d" % (3 * rounds)
    assert (await registry.get(name + "/", prefix=True)).count == 0


async def test_waiters_are_served_in_create_revision_order(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name = prefix + "fifo"
    async with (Session(new_client(), ttl=TTL) as sa, Session(new_client(), ttl=TTL) as sb,
                Session(new_client(), ttl=TTL) as sc):
        a, b, c = Lock(sa, name), Lock(sb, name), Lock(sc, name)
        ta = await a.acquire()
        tc = asyncio.create_task(c.acquire())  # c queues first, then b
        await waiting(registry, name + "/", 2)
        tb = asyncio.create_task(b.acquire())
        await waiting(registry, name + "/", 3)
        await a.release()
        tok_c = await asyncio.wait_for(tc, WAIT)
        assert not tb.done() and await c.is_held()
        assert (await registry.get(name + "/", prefix=True, count_only=True)).count == 2
        await c.release()
        tok_b = await asyncio.wait_for(tb, WAIT)
        assert ta < tok_c < tok_b
        await b.release()


# Process backends only: the holder learns the loss at its keeper's next renewal, a timer that
# on memory runs on a ManualClock only `advance()` moves.
@process_only
async def test_a_revoked_holder_frees_the_lock_and_knows_it_lost_it(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name = prefix + "crash"
    async with Session(new_client(), ttl=TTL) as dead, Session(new_client(), ttl=TTL) as next_:
        holder = Lock(dead, name)
        first = await holder.acquire()
        waiter = asyncio.create_task(Lock(next_, name).acquire())
        await waiting(registry, name + "/", 2)
        await registry.lease_revoke(dead.lease_id)  # what the holder's crash leads to
        second = await asyncio.wait_for(waiter, WAIT)
        assert second > first
        # the old holder learns it at its next renewal: within TTL/3 (+10 % jitter), 2x room
        await asyncio.wait_for(dead.wait_lost(), 2 * TTL)
        assert not holder.held and not await holder.is_held()


async def test_a_cancelled_acquire_leaves_no_key(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name = prefix + "cancel"
    async with Session(new_client(), ttl=TTL) as s1, Session(new_client(), ttl=TTL) as s2:
        holder = Lock(s1, name)
        await holder.acquire()
        w = asyncio.create_task(Lock(s2, name).acquire())
        await waiting(registry, name + "/", 2)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        assert [kv.key for kv in (await registry.get(name + "/", prefix=True)).kvs] == [
            holder.key]
        await holder.release()
        assert (await registry.get(name + "/", prefix=True)).count == 0


async def test_acquires_cancelled_at_any_moment_leave_no_key(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    # Cancelled 0-10 ms after its key appeared: while reading the queue, creating its watch or
    # waiting on it. (A gRPC client's `asyncio.wait_for` on Python 3.11 can swallow a
    # cancellation that lands as the awaited reply arrives; the acquire must not hang then.)
    rng = random.Random(7)
    async with Session(new_client(), ttl=TTL) as s1, Session(new_client(), ttl=TTL) as s2:
        for i in range(40):
            name = f"{prefix}cancel-{i}"
            holder = Lock(s1, name)
            await holder.acquire()
            w = asyncio.create_task(Lock(s2, name).acquire())
            async with asyncio.timeout(WAIT):  # its key appears (polled closely) ...
                while (await registry.get(name + "/", prefix=True, count_only=True)).count < 2:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(rng.uniform(0, 0.01))  # ... and the cancellation follows
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(w, WAIT)
            keys = [kv.key for kv in (await registry.get(name + "/", prefix=True)).kvs]
            assert keys == [holder.key], i
            await holder.release()


# Process backends only: the waiter watches its predecessor, not its own key, so it learns the
# loss at its keeper's next renewal, a timer that on memory runs on a ManualClock only
# `advance()` moves.
@process_only
async def test_a_lost_session_ends_a_waiting_acquire(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name = prefix + "lost"
    async with Session(new_client(), ttl=TTL) as s1, Session(new_client(), ttl=TTL) as s2:
        await Lock(s1, name).acquire()
        w = asyncio.create_task(Lock(s2, name).acquire())
        await waiting(registry, name + "/", 2)
        await registry.lease_revoke(s2.lease_id)
        with pytest.raises(SessionExpired):
            await asyncio.wait_for(w, 2 * TTL)


async def test_election_campaign_proclaim_resign_and_observe(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    name = prefix + "election"
    async with Session(new_client(), ttl=TTL) as s1, Session(new_client(), ttl=TTL) as s2:
        e1, e2 = Election(s1, name), Election(s2, name)
        term1 = await e1.campaign("one")
        async with observe(registry, name) as leaders:
            # the observer's first answer is the leader it found when it listed
            seen = [(await asyncio.wait_for(anext(leaders), WAIT)).value]

            async def follow() -> None:
                async for kv in leaders:
                    seen.append(kv.value)

            follower = asyncio.create_task(follow())
            second = asyncio.create_task(e2.campaign("two"))
            await waiting(registry, name + "/", 2)
            await e1.proclaim("one-b")
            with pytest.raises(NotLeader):
                await e2.proclaim("not yet")
            kv = await e2.leader()
            assert kv is not None and kv.value == b"one-b" and kv.key == e1.key
            await e1.resign()
            term2 = await asyncio.wait_for(second, WAIT)
            assert term2 > term1 and e2.is_leader and not e1.is_leader

            async def saw_all() -> bool:
                return seen == [b"one", b"one-b", b"two"]

            await eventually(saw_all, f"observed leaders (so far {seen})")
            await e2.resign()
            assert await e1.leader() is None
            leaders.close()
            await asyncio.wait_for(follower, WAIT)
            assert seen == [b"one", b"one-b", b"two"]  # no leader: nothing more


async def test_a_campaign_reuses_its_sessions_existing_key(
    registry: RegistryClient, new_client: Callable[[], RegistryClient], prefix: str
) -> None:
    # e.g. left by an earlier campaign of this session whose answer was lost: etcd reuses it
    name = prefix + "reuse"
    async with Session(new_client(), ttl=TTL) as s:
        e = Election(s, name)
        old = await registry.put(e.key, "old", lease=s.lease_id)
        assert await e.campaign("new") == old.revision  # the same key, the same term
        (kv,) = (await registry.get(name + "/", prefix=True)).kvs
        assert kv.key == e.key and kv.value == b"new" and kv.create_revision == old.revision
        await e.resign()
        assert (await registry.get(name + "/", prefix=True)).count == 0


# Process backends only: the CLI is given the backend's URL, which memory does not have.
@process_only
async def test_cli_lock_runs_the_command_while_holding_the_lock(
    registry: RegistryClient, backend: Backend, prefix: str, tmp_path: Path
) -> None:
    name, report = prefix + "cli", tmp_path / "env.txt"
    code = ("import os, sys; open(sys.argv[1], 'w').write("
            "os.environ['RAFTREG_LOCK_KEY'] + ' ' + os.environ['RAFTREG_LOCK_REV']); sys.exit(3)")
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(
        run, ["--endpoints", backend.url, "lock", name, "--", sys.executable, "-c", code,
              str(report)], stdout=out, stderr=err)
    assert rc == 3, err.getvalue()  # the command's status
    key, rev = report.read_text().split()
    assert out.getvalue() == key + "\n" and key.startswith(name + "/") and int(rev) > 0
    assert (await registry.get(name + "/", prefix=True)).count == 0  # released after it


# Process backends only: CLI processes are given the backend's URL, which memory does not have.
@process_only
async def test_cli_elect_campaigns_and_observes_until_ctrl_c(
    registry: RegistryClient, backend: Backend, prefix: str, tmp_path: Path
) -> None:
    name = prefix + "cli-elect"
    cli = [sys.executable, "-m", "raftreg.cli", "--endpoints", backend.url, "elect"]
    with ProcessGroup(tmp_path / "cli") as procs:
        procs.spawn("observer", [*cli, name], dict(os.environ, PYTHONUNBUFFERED="1"))
        procs.spawn("leader", [*cli, "--ttl", str(TTL), name, "p1"],
                    dict(os.environ, PYTHONUNBUFFERED="1"))

        async def led() -> bool:
            return len(procs.log_text("leader").splitlines()) >= 2

        await eventually(led, "`elect NAME p1` printed the leader")
        key, value = procs.log_text("leader").splitlines()[:2]
        assert key.startswith(name + "/") and value == "p1"

        async def observed() -> bool:
            return procs.log_text("observer").splitlines()[:2] == [key, "p1"]

        await eventually(observed, "`elect NAME` printed the leader")
        for p in ("leader", "observer"):  # Ctrl-C: the leader resigns, both exit 0
            os.kill(procs.procs[p].pid, signal.SIGINT)
            assert await asyncio.to_thread(procs.procs[p].wait, WAIT) == 0, procs.log_text(p)
        assert (await registry.get(name + "/", prefix=True)).count == 0


# Process backends only: etcdctl is a process given the backend's endpoints.
@process_only
def test_etcdctl_lock_and_our_lock_exclude_each_other(backend: Backend, tmp_path: Path) -> None:
    """Same key layout as etcd's concurrency package: `etcdctl lock` waits for our Lock, and
    our Lock for `etcdctl lock`; on raftreg etcdctl speaks etcd's API to the same nodes."""
    name = f"interop-{os.getpid()}"

    async def scenario(procs: ProcessGroup) -> None:
        async with connect(backend.url, timeout=3.0) as reg, Session(reg, ttl=TTL) as s:
            ours = Lock(s, name)
            await ours.acquire()
            procs.spawn("etcdctl", [str(etcd_binary("etcdctl")),
                                    "--endpoints", ",".join(backend.endpoints),
                                    "lock", name])
            await waiting(reg, name + "/", 2)  # etcdctl queued behind us ...
            assert procs.log_text("etcdctl") == ""  # ... and does not hold it
            await ours.release()

            async def etcdctl_holds() -> bool:
                return procs.log_text("etcdctl").startswith(name + "/")

            await eventually(etcdctl_holds, "etcdctl holds the lock")
            again = asyncio.create_task(Lock(s, name).acquire())
            await waiting(reg, name + "/", 2)
            assert not again.done()  # we wait for etcdctl
            os.kill(procs.procs["etcdctl"].pid, signal.SIGINT)  # etcdctl unlocks on Ctrl-C
            await asyncio.wait_for(again, WAIT)

    with ProcessGroup(tmp_path / "etcdctl") as procs:
        asyncio.run(scenario(procs))
