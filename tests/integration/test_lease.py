"""Lease API on real node processes, over raw grpc.aio stubs: grant/attach/revoke, keepalive
(also through a follower), expiry timing on every node, failover, whole-cluster restart and a
mass expiry under write load."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftreg.common.keys import prefix_range_end
from raftreg.config import MAX_KEEPALIVE_IDS, ClusterSettings, load_config
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.lessor import TICK_S
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MIN_TTL = 1
PUT, DELETE = pb.Event.PUT, pb.Event.DELETE


@pytest.fixture(scope="module")
def lcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    root = tmp_path_factory.mktemp("lease") / "cluster"
    with ProcessCluster(root, min_lease_ttl=MIN_TTL) as c:
        c.start()
        c.wait_leader()
        yield c


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path / "cluster", min_lease_ttl=MIN_TTL) as c:
        c.start()
        c.wait_leader()
        yield c


def settings_of(c: ProcessCluster) -> ClusterSettings:
    """The settings the cluster's nodes run with (its cluster.toml)."""
    return load_config(c.config_path).settings


# Wall-clock bounds on a real cluster, each derived from its configuration with a 2x margin.
# On a healthy cluster a leader gets an entry committed, and followers learn that it was, within
# an election timeout: a leader that cannot replicate for that long is replaced.


def expiry_lateness_bound(s: ClusterSettings, commits: int = 2) -> float:
    """How long after its deadline an expiry may be observed: the leader's lessor sees the
    deadline within one tick, then `commits` replication steps (the expiry's commit; every
    follower learning it and delivering its events), each within an election timeout."""
    return 2 * (TICK_S + commits * s.election_timeout_max)


def expiry_bound_message(s: ClusterSettings, commits: int = 2) -> str:
    return (f"{expiry_lateness_bound(s, commits):.2f}s = 2 x (lessor tick {TICK_S}s + {commits} x "
            f"election_timeout_max {s.election_timeout_max}s)")


def write_stall_bound(s: ClusterSettings) -> float:
    """The longest a write may wait on a working leader: a leader that cannot commit steps down
    after leader_fallback_timeout, and a new one is elected within election_timeout_max."""
    return 2 * (s.leader_fallback_timeout + s.election_timeout_max)


def roles(c: ProcessCluster) -> tuple[str, list[str]]:
    leader = c.wait_leader()
    return leader, [n for n in c.names if n != leader and c.alive(n)]


class Node:
    """aio stubs on one node."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.channel = grpc.aio.insecure_channel(addr)
        self.kv: Any = pbg.KVStub(self.channel)
        self.lease: Any = pbg.LeaseStub(self.channel)
        self.watch: Any = pbg.WatchStub(self.channel)
        self.maint: Any = pbg.MaintenanceStub(self.channel)

    async def grant(self, ttl: int, lease_id: int = 0) -> pb.LeaseGrantResponse:
        r: pb.LeaseGrantResponse = await self.lease.LeaseGrant(
            pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), timeout=10)
        return r

    async def put(self, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
        r = await self.kv.Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=10)
        return int(r.header.revision)

    async def count(self, key: bytes, range_end: bytes = b"", serializable: bool = False) -> int:
        r = await self.kv.Range(pb.RangeRequest(key=key, range_end=range_end, count_only=True,
                                                serializable=serializable), timeout=10)
        return int(r.count)

    async def ttl(self, lease_id: int, keys: bool = False) -> pb.LeaseTimeToLiveResponse:
        r: pb.LeaseTimeToLiveResponse = await self.lease.LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), timeout=10)
        return r

    async def revision(self) -> int:
        r = await self.maint.Status(pb.StatusRequest(), timeout=5)
        return int(r.header.revision)

    async def close(self) -> None:
        await self.channel.close(None)


class KeepAlive:
    """One LeaseKeepAlive stream; `ping(ids)` sends one keepalive per id (etcd's request) and
    waits for all; `ping(ids, batched=True)` sends them in one request (raftreg's `IDs`) and
    checks its one answer."""

    def __init__(self, node: Node) -> None:
        self._q: asyncio.Queue[pb.LeaseKeepAliveRequest | None] = asyncio.Queue()
        self.call: Any = node.lease.LeaseKeepAlive(self._iter())

    async def _iter(self) -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        while (r := await self._q.get()) is not None:
            yield r

    async def _read(self, deadline: float) -> pb.LeaseKeepAliveResponse:
        resp = await asyncio.wait_for(self.call.read(), max(0.01, deadline - time.monotonic()))
        assert resp is not grpc.aio.EOF, "the keepalive stream ended"  # type: ignore[attr-defined]
        assert resp.batches, "a raftreg server announces many-lease keepalives"
        return resp  # type: ignore[no-any-return]

    async def ping(self, ids: list[int], timeout: float = 10.0, *,
                   batched: bool = False) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        if batched:
            self._q.put_nowait(pb.LeaseKeepAliveRequest(IDs=ids))
            resp = await self._read(deadline)
            assert list(resp.IDs) == ids and len(resp.TTLs) == len(ids) and resp.ID == 0
            return dict(zip(resp.IDs, resp.TTLs, strict=True))
        for i in ids:
            self._q.put_nowait(pb.LeaseKeepAliveRequest(ID=i))
        out: dict[int, int] = {}
        while len(out) < len(set(ids)):
            resp = await self._read(deadline)
            assert not resp.IDs
            out[int(resp.ID)] = int(resp.TTL)
        return out

    def close(self) -> None:
        self._q.put_nowait(None)
        self.call.cancel()


class EventLog:
    """A watch on a prefix, recording (receive time, event) in the background."""

    def __init__(self, node: Node, key: bytes, range_end: bytes) -> None:
        self._q: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        self.call: Any = node.watch.Watch(self._iter())
        self._q.put_nowait(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key, range_end=range_end)))
        self.events: list[tuple[float, pb.Event]] = []
        self.created = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _iter(self) -> AsyncIterator[pb.WatchRequest]:
        while (r := await self._q.get()) is not None:
            yield r

    async def _run(self) -> None:
        async for resp in self.call:
            now = time.monotonic()
            if resp.created:
                self.created.set()
            assert not resp.canceled, resp.cancel_reason
            self.events.extend((now, e) for e in resp.events)

    async def wait(self, pred: Any, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.created.wait(), timeout)
        deadline = time.monotonic() + timeout
        while not pred(self.events):
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"timed out with {len(self.events)} events"
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._q.put_nowait(None)
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


# ---------------------------------------------------------------------------------------------


async def test_grant_attach_revoke_and_list(lcluster: ProcessCluster) -> None:
    leader, (f1, f2) = roles(lcluster)
    a, b, ld = Node(lcluster.client[f1]), Node(lcluster.client[f2]), Node(lcluster.client[leader])
    watch = EventLog(b, b"lg/", prefix_range_end(b"lg/"))
    try:
        g1 = await a.grant(0)  # server-chosen id; TTL raised to the minimum
        assert g1.ID > 0 and g1.TTL == MIN_TTL
        g3 = await a.grant(30)  # server-chosen id, alive through every check below
        assert g3.ID > 0 and g3.ID != g1.ID and g3.TTL == 30
        g2 = await b.grant(10, lease_id=0x5EED)
        assert (g2.ID, g2.TTL) == (0x5EED, 10)
        with pytest.raises(grpc.aio.AioRpcError) as dup:
            await a.grant(10, lease_id=0x5EED)
        assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
        ka = KeepAlive(a)
        r1 = await a.put(b"lg/one", lease=g2.ID)
        r2 = await b.put(b"lg/two", lease=g2.ID)
        got = await a.kv.Range(pb.RangeRequest(key=b"lg/one"), timeout=10)
        assert got.kvs[0].lease == g2.ID
        for n in (a, b, ld):  # followers forward TimeToLive to the leader
            t = await n.ttl(g2.ID, keys=True)
            assert sorted(t.keys) == [b"lg/one", b"lg/two"]
            assert t.grantedTTL == 10 and 0 < t.TTL <= 10
        # A put with an unknown lease is refused and changes nothing.
        before = await ld.revision()
        with pytest.raises(grpc.aio.AioRpcError) as nf:
            await a.put(b"lg/three", lease=0x0BAD)
        assert nf.value.code() == grpc.StatusCode.NOT_FOUND, nf.value.details()
        assert await ld.revision() == before
        assert await b.count(b"lg/three") == 0
        ids = {s.ID for s in (await a.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)
                              ).leases}
        assert {g2.ID, g3.ID} <= ids  # (g1 may be gone already: its TTL is 1 s)
        # Revoke deletes the keys, with DELETE events, in one revision.
        rev = await b.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=g2.ID), timeout=10)
        await watch.wait(lambda evs: sum(e.type == DELETE for _, e in evs) >= 2)
        evs = [(e.type, e.kv.key, e.kv.mod_revision) for _, e in watch.events]
        rr = rev.header.revision
        assert evs == [(PUT, b"lg/one", r1), (PUT, b"lg/two", r2),
                       (DELETE, b"lg/one", rr), (DELETE, b"lg/two", rr)]
        for n in (a, b, ld):
            assert await n.count(b"lg/", prefix_range_end(b"lg/")) == 0
            assert (await n.ttl(g2.ID)).TTL == -1
        ids = {s.ID for s in (await ld.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)
                              ).leases}
        assert g2.ID not in ids
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await a.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=g2.ID), timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await ka.ping([g2.ID]))[g2.ID] == 0, "keepalive of a gone lease answers TTL 0"
        ka.close()
    finally:
        await watch.close()
        for n in (a, b, ld):
            await n.close()


@pytest.mark.parametrize("batched", [False, True], ids=["one-per-request", "one-request"])
async def test_keepalive_many_leases_on_one_stream_through_a_follower(
    lcluster: ProcessCluster, batched: bool,
) -> None:
    leader, (f1, _) = roles(lcluster)
    f = Node(lcluster.client[f1])
    ld = Node(lcluster.client[leader])
    try:
        ttl = 2
        late = expiry_lateness_bound(settings_of(lcluster))
        # Each setup step is one concurrent round, far shorter than the TTL, and the first
        # keepalive round follows the grants at once.
        ids = [g.ID for g in await asyncio.gather(*(f.grant(ttl) for _ in range(50)))]
        ka = KeepAlive(f)
        assert await ka.ping(ids, batched=batched) == {lid: ttl for lid in ids}
        await asyncio.gather(*(f.put(b"ka/%d" % i, lease=lid) for i, lid in enumerate(ids)))
        control = (await f.grant(ttl)).ID  # not kept alive: proves the TTL is real
        t_control = time.monotonic()  # its TTL started before this
        await f.put(b"ka/control", lease=control)
        t0 = time.monotonic()
        rounds = 0
        # Renew every TTL/4 for 2.5 TTLs, and until the control lease has expired.
        while time.monotonic() - t0 < 2.5 * ttl or await ld.count(b"ka/control") == 1:
            assert time.monotonic() < t_control + ttl + late, (
                f"the control lease (not kept alive) still exists {ttl + late:.2f}s after its "
                f"grant: TTL {ttl}s + {expiry_bound_message(settings_of(lcluster))}")
            t = time.monotonic()
            got = await ka.ping(ids, batched=batched)
            assert got == {lid: ttl for lid in ids}, "a lease kept alive every TTL/4 was lost"
            rounds += 1
            await asyncio.sleep(max(0.0, ttl / 4 - (time.monotonic() - t)))
        ka.close()
        assert await ld.count(b"ka/", b"ka/control") == len(ids)
        for lid in ids[:5]:
            assert (await ld.ttl(lid)).TTL > 0
        print(f"\n{rounds} rounds of {len(ids)} keepalives through a follower")
    finally:
        await f.close()
        await ld.close()


async def test_one_keepalive_request_renews_many_leases(lcluster: ProcessCluster) -> None:
    """raftreg's `IDs`: one answer, pair by pair in order (`ID` first when also set), 0 for an
    unknown lease, the same through a follower; at most MAX_KEEPALIVE_IDS per request. etcd's
    API answers etcd's way and does not announce `batches` (an etcd client never sends IDs)."""
    leader, (f1, _) = roles(lcluster)
    ld, f = Node(lcluster.client[leader]), Node(lcluster.client[f1])
    try:
        a, b = [g.ID for g in await asyncio.gather(ld.grant(20), ld.grant(30))]
        unknown = 0x0BAD0BAD
        for n in (ld, f):
            call = n.lease.LeaseKeepAlive(
                iter([pb.LeaseKeepAliveRequest(ID=b, IDs=[a, unknown, a])]), timeout=10)
            answers = [r async for r in call]
            assert len(answers) == 1
            r = answers[0]
            assert (list(r.IDs), list(r.TTLs), r.ID, r.batches) == (
                [b, a, unknown, a], [30, 20, 0, 20], 0, True)
        etcd_ka = ld.channel.stream_stream(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            request_serializer=pb.LeaseKeepAliveRequest.SerializeToString,
            response_deserializer=pb.LeaseKeepAliveResponse.FromString)
        answers = [r async for r in etcd_ka(iter([pb.LeaseKeepAliveRequest(ID=a)]), timeout=10)]
        assert [(r.ID, r.TTL, r.batches) for r in answers] == [(a, 20, False)]
        call = ld.lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(IDs=[a] * (MAX_KEEPALIVE_IDS + 1))]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            _ = [r async for r in call]
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(MAX_KEEPALIVE_IDS) in (too_many.value.details() or "")
    finally:
        await ld.close()
        await f.close()


async def test_expiry_deletes_on_every_node_not_early_and_soon_after(
    lcluster: ProcessCluster,
) -> None:
    leader, (f1, f2) = roles(lcluster)
    nodes = {n: Node(lcluster.client[n]) for n in lcluster.names}
    logs = {n: EventLog(nodes[n], b"ex/", prefix_range_end(b"ex/")) for n in lcluster.names}
    try:
        ttl = 2
        settings = settings_of(lcluster)
        bound = expiry_lateness_bound(settings)
        lid = (await nodes[f1].grant(ttl)).ID
        await nodes[f1].put(b"ex/k", lease=lid)
        ka = KeepAlive(nodes[leader])
        last_send = 0.0
        for _ in range(3):  # a few renewals; the deadline counts from the last one's send time
            last_send = time.monotonic()
            assert (await ka.ping([lid]))[lid] == ttl
            await asyncio.sleep(0.4)
        ka.close()
        # Poll with linearizable reads: present until the TTL has passed.
        reader = nodes[f2]
        while True:
            t_start = time.monotonic()
            present = await reader.count(b"ex/k") == 1
            t_done = time.monotonic()
            if not present:
                assert t_done >= last_send + ttl, f"expired {last_send + ttl - t_done:.3f}s early"
                break
            assert t_start < last_send + ttl + bound, (
                f"not expired {ttl + bound:.2f}s after the last renewal was sent: TTL {ttl}s + "
                f"{expiry_bound_message(settings)}")
            await asyncio.sleep(0.01)
        for log in logs.values():
            await log.wait(lambda evs: any(e.type == DELETE for _, e in evs))
        dels = {n: [(t, e) for t, e in log.events if e.type == DELETE]
                for n, log in logs.items()}
        assert len({d[0][1].kv.mod_revision for d in dels.values()}) == 1
        lateness = {n: d[0][0] - (last_send + ttl) for n, d in dels.items()}
        print("\nexpiry lateness after TTL (event received): "
              + ", ".join(f"{n} {v * 1e3:.0f} ms" for n, v in sorted(lateness.items())))
        for n, late in lateness.items():
            # Never early: that is the correctness property. Late only by what the
            # configuration allows.
            assert late >= 0, f"{n} saw the expiry {-late:.3f}s before the lease's deadline"
            assert late < bound, (
                f"{n} saw the expiry {late:.2f}s after the deadline; expected within "
                f"{expiry_bound_message(settings)}")
        assert (await nodes[leader].ttl(lid)).TTL == -1
    finally:
        for log in logs.values():
            await log.close()
        for node in nodes.values():
            await node.close()


async def test_mass_expiry_while_serving_puts(lcluster: ProcessCluster) -> None:
    leader, (f1, _) = roles(lcluster)
    g, ld = Node(lcluster.client[f1]), Node(lcluster.client[leader])
    # The setup (2000 grants, keys attached 100 per txn) goes in chunks, renewing what was
    # granted so far whenever a quarter TTL has passed, so nothing expires early however long
    # it takes; then one round of keepalives lines all the deadlines up.
    n, ttl, chunk = 2000, 8, 200
    stall = write_stall_bound(settings_of(lcluster))
    try:
        sem = asyncio.Semaphore(64)

        async def grant() -> int:
            async with sem:
                return int((await g.grant(ttl)).ID)

        ids: list[int] = []

        async def attach(j: int) -> None:
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"me/%04d" % i, value=b"v",
                                                          lease=ids[i]))
                   for i in range(j, min(n, j + 100))]
            await g.kv.Txn(pb.TxnRequest(success=ops), timeout=10)

        t_setup = t_renewed = time.monotonic()
        renewer = KeepAlive(ld)
        for j in range(0, n, chunk):
            ids += await asyncio.gather(*(grant() for _ in range(chunk)))
            await asyncio.gather(*(attach(k) for k in range(j, j + chunk, 100)))
            if time.monotonic() - t_renewed > ttl / 4:
                got_so_far = await renewer.ping(ids, timeout=30)
                assert set(got_so_far.values()) == {ttl}, "a lease expired during the setup"
                t_renewed = time.monotonic()
        renewer.close()
        t_ka = time.monotonic()
        kas = [KeepAlive(ld) for _ in range(4)]
        got: dict[int, int] = {}
        for part in await asyncio.gather(*(ka.ping(ids[j::4], timeout=30)
                                           for j, ka in enumerate(kas))):
            got.update(part)
        assert set(got.values()) == {ttl}
        t_acked = time.monotonic()
        print(f"\nsetup {t_ka - t_setup:.1f}s, keepalive of {n} leases {t_acked - t_ka:.2f}s")
        for ka in kas:
            ka.close()
        latencies: list[tuple[float, float]] = []
        i = 0
        while True:
            t = time.monotonic()
            await g.put(b"mw/%d" % i)
            latencies.append((t, time.monotonic() - t))
            i += 1
            if t > t_ka + ttl and i % 10 == 0 and await ld.count(
                    b"me/", prefix_range_end(b"me/"), serializable=True) == 0:
                break
            assert t < t_acked + ttl + 15, f"the {n} leases were not all gone 15s after their TTL"
        t_gone = time.monotonic()
        window = [lat for t, lat in latencies if t >= t_ka + ttl]
        p50 = statistics.median(window)
        p99 = sorted(window)[int(0.99 * (len(window) - 1))]
        print(f"{n} leases gone {t_gone - t_acked - ttl:+.2f}s after the TTL of the last ack; "
              f"{len(window)} puts meanwhile: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
              f"max {max(window) * 1e3:.1f} ms")
        assert max(window) < stall, (
            f"a put took {max(window):.2f}s during the mass expiry; expected within "
            f"{stall:.1f}s = 2 x (leader_fallback_timeout + election_timeout_max), the time "
            f"the cluster lets a leader stall before replacing it")
        for name in lcluster.names:
            nd = Node(lcluster.client[name])
            try:
                assert await nd.count(b"me/", prefix_range_end(b"me/")) == 0
            finally:
                await nd.close()
        left = {s.ID for s in (await ld.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)
                               ).leases}
        assert not left & set(ids)
    finally:
        await g.close()
        await ld.close()


async def test_leader_kill_expires_no_kept_alive_lease(own_cluster: ProcessCluster) -> None:
    c = own_cluster
    leader, (f1, _) = roles(c)
    ttl = 2
    setup = Node(c.client[f1])
    ids = [(await setup.grant(ttl)).ID for _ in range(20)]
    for i, lid in enumerate(ids):
        await setup.put(b"lk/%d" % i, lease=lid)
    await setup.close()
    stop = asyncio.Event()
    acks: list[float] = []
    errors: list[str] = []

    async def keeper() -> None:
        """Renew every TTL/3 on one node; on any failure move on to the next live node."""
        order = [leader] + [n for n in c.names if n != leader]
        k = 0
        while not stop.is_set():
            name = order[k % len(order)]
            node = Node(c.client[name])
            ka = KeepAlive(node)
            try:
                while not stop.is_set():
                    got = await ka.ping(ids, timeout=ttl / 3)
                    assert set(got.values()) == {ttl}, got
                    acks.append(time.monotonic())
                    await asyncio.sleep(ttl / 3)
            except (grpc.aio.AioRpcError, TimeoutError, AssertionError) as e:
                errors.append(f"{name}: {type(e).__name__} {e}"[:200])
                k += 1
                await asyncio.sleep(0.05)
            finally:
                ka.close()
                await node.close()

    task = asyncio.create_task(keeper())
    try:
        t0 = time.monotonic()
        while len(acks) < 2:
            assert time.monotonic() - t0 < 10, f"no two keepalive rounds within 10s: {errors}"
            await asyncio.sleep(0.01)
        c.kill(leader)
        t_kill = time.monotonic()
        new_leader = c.wait_leader(among=[n for n in c.names if n != leader])
        # Keep renewing for a few TTLs after the failover.
        while time.monotonic() < t_kill + 3 * ttl or not [a for a in acks if a > t_kill + ttl]:
            assert time.monotonic() - t_kill < 20, f"keepalives never resumed: {errors}"
            await asyncio.sleep(0.05)
        nl = Node(c.client[new_leader])
        try:
            assert await nl.count(b"lk/", prefix_range_end(b"lk/")) == len(ids), errors
            for lid in ids:
                assert (await nl.ttl(lid)).TTL > 0
        finally:
            await nl.close()
        gap = max(b - a for a, b in itertools.pairwise(acks))
        print(f"\nlongest keepalive gap across the failover {gap:.2f}s; retries: {errors}")
    finally:
        stop.set()
        await task


def start_and_bracket_first_leader(c: ProcessCluster, timeout: float) -> tuple[float, float]:
    """Start every node and wait until one claims leadership. Returns (no_leader_at,
    leader_by): no node led at `no_leader_at` (all of them answered that they did not, or the
    nodes were not started yet), and one did by `leader_by`. So the first promotion after the
    restart happened in between, without any allowance for how fast this loop polls."""
    no_leader_at = time.monotonic()
    c.start()
    deadline = no_leader_at + timeout
    while True:
        t = time.monotonic()
        sts = [c.status(n) for n in c.names]
        if any(st is not None and st.leader == st.header.member_id for st in sts):
            return no_leader_at, time.monotonic()
        if all(st is not None for st in sts):
            no_leader_at = t  # every node answered, none leads (an unanswered node might)
        assert t < deadline, f"no node claimed leadership within {timeout}s; logs in {c.root}"
        time.sleep(0.02)


async def test_whole_cluster_restart_gives_a_full_ttl(own_cluster: ProcessCluster) -> None:
    c = own_cluster
    ttl = 3
    n = Node(c.client[c.names[0]])
    lid = (await n.grant(ttl)).ID
    await n.put(b"rs/k", lease=lid)
    await n.put(b"rs/plain")
    await n.close()
    c.wait_converged()
    for name in c.names:
        c.kill(name)
    # Down for longer than the TTL (the outage itself is what is tested, not a wait for an
    # event): an expiry counted across the outage would be immediate.
    await asyncio.sleep(ttl + 0.5)
    no_leader_at, leader_by = start_and_bracket_first_leader(c, timeout=30)
    settings = settings_of(c)
    # After the promotion: the new leader's LeaderEpoch commit, then the expiry as usual.
    bound = expiry_lateness_bound(settings, commits=3)
    nodes = [Node(c.client[x]) for x in c.names]
    try:
        while True:
            t = time.monotonic()
            assert t < leader_by + ttl + bound, (
                f"the lease still exists {ttl + bound:.2f}s after a leader was back: TTL {ttl}s "
                f"+ {expiry_bound_message(settings, commits=3)}")
            try:
                present = await nodes[0].count(b"rs/k") == 1
            except grpc.aio.AioRpcError as e:  # still catching up: not an answer either way
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                await asyncio.sleep(0.02)
                continue
            t = time.monotonic()
            if not present:
                break
            await asyncio.sleep(0.02)
        # Visible for a full TTL from the promotion, which came after `no_leader_at`: an
        # absence seen (at t) before no_leader_at + TTL is an early deletion, no allowance.
        assert t >= no_leader_at + ttl, (
            f"deleted at least {no_leader_at + ttl - t:.2f}s before a full TTL ({ttl}s) "
            f"from the new leader's promotion")
        print(f"\nlease expired {t - leader_by:.2f}s after a leader was back (TTL {ttl}s; "
              f"leader found {leader_by - no_leader_at:.2f}s after the last leaderless look)")
        for x in nodes:
            assert await x.count(b"rs/plain") == 1
    finally:
        for x in nodes:
            await x.close()


async def _ttl_on(c: ProcessCluster, name: str, lease_id: int) -> tuple[int, float]:
    """(TTL left, when the answer arrived) from `name`, waiting out UNAVAILABLE while it
    establishes its leadership."""
    node = Node(c.client[name])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                got = (await node.ttl(lease_id)).TTL
                return int(got), time.monotonic()
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                assert time.monotonic() < deadline, f"{name} never answered: {e}"
                await asyncio.sleep(0.02)
    finally:
        await node.close()


async def test_a_new_leader_keeps_the_checkpointed_remaining_ttl(tmp_path: Path) -> None:
    """Checkpoints every 0.5 s. A lease left to run down for 6 s keeps its remaining TTL across
    a leader kill (not a fresh full one); once renewed, the next leader gives it a full TTL
    again: a renewal is never cut short by an older checkpoint."""
    ttl = 20
    with ProcessCluster(tmp_path / "cluster", min_lease_ttl=MIN_TTL,
                        lease_checkpoint_interval_s=0.5) as c:
        c.start()
        first = c.wait_leader()
        n = Node(c.client[first])
        try:
            sent = time.monotonic()
            lid = (await n.grant(ttl)).ID
            granted = time.monotonic()
            await n.put(b"ck/k", lease=lid)
            left = ttl
            while left > ttl - 6:  # the lease runs down: nothing to wait on
                left = (await n.ttl(lid)).TTL
                assert time.monotonic() - granted < 15, "the lease's TTL did not go down"
                await asyncio.sleep(0.1)
        finally:
            await n.close()
        c.kill(first)
        killed = time.monotonic()
        second = c.wait_leader(among=[x for x in c.names if x != first])
        left, at = await _ttl_on(c, second, lid)
        assert left >= sent + ttl - at, f"{left}s left: cut short (at most {at - sent:.1f}s ran)"
        # The last checkpoint was at most an interval (+ a commit) before the kill; whole
        # seconds round up; the lease may have started its TTL a scan after the grant.
        most = ttl - (killed - granted) + 0.5 + 0.5 + 1 + 1
        assert left <= most, f"{left}s left after a {killed - granted:.1f}s run-down: not kept"
        print(f"\nafter {killed - granted:.1f}s of a {ttl}s TTL and a leader kill: {left}s left")

        c.start(first)
        c.wait_converged()
        node = Node(c.client[second])
        ka = KeepAlive(node)
        try:
            renewed = time.monotonic()
            assert await ka.ping([lid]) == {lid: ttl}
            c.kill(second)
        finally:
            ka.close()
            await node.close()
        third = c.wait_leader(among=[x for x in c.names if x != second])
        left, at = await _ttl_on(c, third, lid)
        assert left >= renewed + ttl - at, (
            f"{left}s left {at - renewed:.1f}s after a renewal: an older checkpoint cut it")
