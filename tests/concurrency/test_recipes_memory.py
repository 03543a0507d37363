"""Session, Lock and Election over the in-memory registry (real store, manual lease clock).

Lease time only moves through `step` (ManualClock); every other wait is on an event or a
condition polled on loop iterations, bounded by a wall-clock timeout that only a hang reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from raftreg.client import MemoryRegistryClient, SyncRegistryClient, Watch
from raftreg.common.types import Put, Txn
from raftreg.concurrency import (
    Election,
    Lock,
    NotLeader,
    Session,
    SessionExpired,
    SyncElection,
    SyncLock,
    SyncSession,
    leader,
    observe,
)
from raftreg.errors import DeadlineExceeded, FailedPrecondition

pytestmark = pytest.mark.timeout(30)

TTL = 6


@pytest.fixture
async def mem() -> AsyncIterator[MemoryRegistryClient]:
    c = MemoryRegistryClient(seed=1)
    yield c
    await c.close()


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (pure yields, no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def step(m: MemoryRegistryClient, total: float, dt: float = 0.5) -> None:
    """Advance the lease clock by `total` in `dt` steps, letting keepers renew after each."""
    for _ in range(round(total / dt)):
        m.advance(dt)
        await settle()


async def keys(m: MemoryRegistryClient, prefix: str) -> list[bytes]:
    return [kv.key for kv in (await m.get(prefix, prefix=True)).kvs]


async def queued(m: MemoryRegistryClient, prefix: str, n: int) -> None:
    """Until `n` keys wait under `prefix`."""
    async with asyncio.timeout(5):
        while len(await keys(m, prefix)) < n:
            await asyncio.sleep(0.001)


# --- Session -----------------------------------------------------------------------------------


async def test_session_keeps_its_lease_and_close_revokes_it(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        assert s.lease_id in mem.keepalive_manager().kept() and s.ttl == TTL
        await step(mem, 4 * TTL)  # renewed across several TTLs
        assert not s.lost and s.lease_id in await mem.lease_list()
        lease = s.lease_id
    assert s.lost and s.closed and lease not in await mem.lease_list()
    with pytest.raises(SessionExpired):
        s.check()


async def test_a_revoked_lease_makes_the_session_lost(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        await mem.lease_revoke(s.lease_id)  # another process (or an operator) revoked it
        await step(mem, TTL / 2)  # the keeper learns at its next renewal
        await asyncio.wait_for(s.wait_lost(), 5)
        assert s.lost and not s.closed


# --- Lock --------------------------------------------------------------------------------------


async def test_lock_key_layout_token_holder_and_release(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        lock = Lock(s, "locks/db")
        token = await lock.acquire()
        assert lock.key == f"locks/db/{s.lease_id:x}".encode()  # etcd's layout
        (kv,) = (await mem.get(lock.key)).kvs
        assert token == lock.revision == kv.create_revision and kv.lease == s.lease_id
        holder = await lock.holder()
        assert holder is not None and holder.key == lock.key
        assert lock.held and await lock.is_held()
        await lock.release()
        await lock.release()  # idempotent
        assert not lock.held and not (await mem.get(lock.key)).kvs


async def test_waiters_get_the_lock_in_arrival_order_with_increasing_tokens(
    mem: MemoryRegistryClient,
) -> None:
    async with (Session(mem, ttl=TTL) as s1, Session(mem, ttl=TTL) as s2,
                Session(mem, ttl=TTL) as s3):
        a, b, c = Lock(s1, "q"), Lock(s2, "q"), Lock(s3, "q")
        order: list[str] = []
        t_a = await a.acquire()
        # c arrives before b: create revision order, not construction order, decides
        tc = asyncio.create_task(c.acquire())
        await queued(mem, "q/", 2)
        tb = asyncio.create_task(b.acquire())
        await queued(mem, "q/", 3)
        tc.add_done_callback(lambda _: order.append("c"))
        tb.add_done_callback(lambda _: order.append("b"))
        await settle()
        assert not tb.done() and not tc.done()
        await a.release()
        t_c = await asyncio.wait_for(tc, 5)
        await settle()
        assert not tb.done()  # b still waits behind c
        await c.release()
        t_b = await asyncio.wait_for(tb, 5)
        assert order == ["c", "b"] and t_a < t_c < t_b
        await b.release()


async def test_a_dead_holder_frees_the_lock_when_its_lease_expires(
    mem: MemoryRegistryClient,
) -> None:
    async with Session(mem, ttl=TTL) as dead, Session(mem, ttl=TTL) as live:
        await Lock(dead, "x").acquire()
        waiter = asyncio.create_task(Lock(live, "x").acquire())
        await queued(mem, "x/", 2)
        # the holder's process dies: nobody renews its lease any more
        mem.keepalive_manager().forget(dead.lease_id)
        await step(mem, TTL - 1)
        assert not waiter.done()  # never before the lease ran out
        await step(mem, 1.5)
        token = await asyncio.wait_for(waiter, 5)
        assert await keys(mem, "x/") == [f"x/{live.lease_id:x}".encode()]
        assert token > 0 and not live.lost


async def test_a_cancelled_acquire_leaves_no_key(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s1, Session(mem, ttl=TTL) as s2:
        holder = Lock(s1, "c")
        await holder.acquire()
        w = asyncio.create_task(Lock(s2, "c").acquire())
        await queued(mem, "c/", 2)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        assert await keys(mem, "c/") == [holder.key]
        # a timed-out acquire is a cancelled one
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(Lock(s2, "c").acquire(), 0.05)
        assert await keys(mem, "c/") == [holder.key]


async def test_a_lost_session_ends_a_waiting_acquire_with_session_expired(
    mem: MemoryRegistryClient,
) -> None:
    async with Session(mem, ttl=TTL) as s1, Session(mem, ttl=TTL) as s2:
        await Lock(s1, "l").acquire()
        w = asyncio.create_task(Lock(s2, "l").acquire())
        await queued(mem, "l/", 2)
        await mem.lease_revoke(s2.lease_id)
        await step(mem, TTL / 2)
        with pytest.raises(SessionExpired):
            await asyncio.wait_for(w, 5)
        assert len(await keys(mem, "l/")) == 1


async def test_locks_of_one_session_take_turns_locally(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        first, second = Lock(s, "shared"), Lock(s, "shared")
        r1 = await first.acquire()
        t = asyncio.create_task(second.acquire())
        await settle()
        assert not t.done()
        await first.release()
        r2 = await asyncio.wait_for(t, 5)
        assert r2 > r1  # a fresh key: the token still moves forward
        with pytest.raises(FailedPrecondition):
            await second.acquire()
        await second.release()


async def test_try_acquire_and_the_owner_compare_fence_writes(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s1, Session(mem, ttl=TTL) as s2:
        a, b = Lock(s1, "f"), Lock(s2, "f")
        assert await a.try_acquire() > 0
        assert await b.try_acquire() == 0 and await keys(mem, "f/") == [a.key]
        fenced = Txn(compare=(a.owner_compare(),), success=(Put(b"data", b"from a"),))
        assert (await mem.txn(fenced)).succeeded
        await a.release()
        assert await b.try_acquire() > 0
        # a's old compare no longer holds: a write fenced by it is refused
        assert not (await mem.txn(fenced)).succeeded
        await b.release()


# --- Election ----------------------------------------------------------------------------------


async def test_election_campaign_proclaim_resign_and_observe(mem: MemoryRegistryClient) -> None:
    seen: list[bytes] = []
    async with (Session(mem, ttl=TTL) as s1, Session(mem, ttl=TTL) as s2,
                observe(mem, "e") as leaders):
        got = asyncio.Event()

        async def follow() -> None:
            async for kv in leaders:
                seen.append(kv.value)
                got.set()

        follower = asyncio.create_task(follow())
        e1, e2 = Election(s1, "e"), Election(s2, "e")
        assert await leader(mem, "e") is None
        term1 = await e1.campaign("one")
        assert e1.is_leader and (await e1.leader()) is not None
        second = asyncio.create_task(e2.campaign("two"))
        await queued(mem, "e/", 2)
        await e1.proclaim("one-b")
        with pytest.raises(NotLeader):
            await e2.proclaim("not yet")
        await until(lambda: seen == [b"one", b"one-b"])
        await e1.resign()
        term2 = await asyncio.wait_for(second, 5)
        assert term2 > term1 and not e1.is_leader
        kv = await leader(mem, "e")
        assert kv is not None and kv.value == b"two"
        await until(lambda: seen == [b"one", b"one-b", b"two"])
        await e2.resign()
        leaders.close()
        await asyncio.wait_for(follower, 5)
        assert seen == [b"one", b"one-b", b"two"]  # no leader: nothing reported


async def test_a_leader_whose_key_is_gone_cannot_proclaim(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        e = Election(s, "gone")
        await e.campaign("v")
        await mem.delete(e.key)  # e.g. an operator, or the lease ended
        with pytest.raises(NotLeader):
            await e.proclaim("w")
        assert not e.is_leader
        await e.resign()  # nothing to do: idempotent


async def test_observe_survives_a_compaction(mem: MemoryRegistryClient) -> None:
    async with Session(mem, ttl=TTL) as s:
        e = Election(s, "c")
        await e.campaign("a")
        async with observe(mem, "c") as leaders:
            assert (await anext(leaders)).value == b"a"
            await e.proclaim("b")
            r = await mem.put("unrelated", "x")
            await mem.compact(r.revision)
            assert (await asyncio.wait_for(anext(leaders), 5)).value == b"b"


# --- the blocking facade -----------------------------------------------------------------------


def test_sync_lock_excludes_threads_and_times_out_cleanly() -> None:
    client = SyncRegistryClient.wrap(lambda: MemoryRegistryClient(seed=2))
    inside = 0
    overlaps: list[int] = []
    tokens: list[int] = []
    guard = threading.Lock()
    try:
        with SyncSession(client, ttl=TTL) as s1, SyncSession(client, ttl=TTL) as s2:

            def worker(session: SyncSession) -> None:
                nonlocal inside
                for _ in range(10):
                    with SyncLock(session, "t") as lock:
                        with guard:
                            inside += 1
                            overlaps.append(inside)
                            tokens.append(lock.revision)
                        threading.Event().wait(0.001)  # let others try to get in
                        with guard:
                            inside -= 1

            threads = [threading.Thread(target=worker, args=(s,)) for s in (s1, s2, s1, s2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert max(overlaps) == 1 and len(tokens) == 40
            assert tokens == sorted(tokens) and len(set(tokens)) == 40

            held = SyncLock(s1, "t")
            held.acquire()
            with pytest.raises(DeadlineExceeded):
                SyncLock(s2, "t").acquire(timeout=0.05)
            assert [kv.key for kv in client.get("t/", prefix=True).kvs] == [held.key]
            held.release()
            el = SyncElection(s2, "el")
            el.campaign("me", timeout=5)
            kv = el.leader()
            assert kv is not None and kv.value == b"me"
            el.proclaim("me2")
            el.resign()
            assert el.leader() is None
    finally:
        client.close()


class _SwallowingWatchClient(MemoryRegistryClient):
    """A client whose `watch()` loses a cancellation that arrives as the watch is confirmed,
    as `asyncio.wait_for` does on Python 3.11 (CPython gh-86296; the gRPC clients wait for
    the confirmation with it)."""

    def __init__(self) -> None:
        super().__init__(seed=3)
        self.in_watch = asyncio.Event()

    async def watch(self, *args: Any, **kwargs: Any) -> Watch:
        w = await super().watch(*args, **kwargs)
        self.in_watch.set()
        # until cancelled; the cancellation is swallowed and the watch returned
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return w


async def test_a_cancellation_swallowed_by_the_client_still_cancels_the_acquire() -> None:
    async with (_SwallowingWatchClient() as m, Session(m, ttl=TTL) as s1,
                Session(m, ttl=TTL) as s2):
        holder = Lock(s1, "s")
        await holder.acquire()
        w = asyncio.create_task(Lock(s2, "s").acquire())
        await asyncio.wait_for(m.in_watch.wait(), 5)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(w, 5)
        assert await keys(m, "s/") == [holder.key]
