"""Watch API on real node processes, over raw grpc.aio stubs (what crosses the wire).

Each test waits for responses with deadlines; a progress request (answered after everything the
stream was sent before it) serves as the "nothing more is coming" barrier instead of sleeps.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from raftreg.common.keys import prefix_range_end
from raftreg.config import ClusterSettings, load_config
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

PROGRESS_INTERVAL = 0.3
BUFFER_EVENTS = 300
PUT, DELETE = pb.Event.PUT, pb.Event.DELETE


@pytest.fixture(scope="module")
def wcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """Three nodes with fast periodic progress and a small per-stream event buffer."""
    root = tmp_path_factory.mktemp("watch") / "cluster"
    with ProcessCluster(root, watch_progress_interval_s=PROGRESS_INTERVAL,
                        watch_buffer_events=BUFFER_EVENTS) as c:
        c.start()
        c.wait_leader()
        yield c


class Watcher:
    """One Watch stream (many watches) on one node."""

    def __init__(self, addr: str, options: list[tuple[str, Any]] | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(addr, options=options)
        self._requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        self.call: Any = pbg.WatchStub(self.channel).Watch(self._iter())
        self._stash: list[pb.WatchResponse] = []

    async def _iter(self) -> AsyncIterator[pb.WatchRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    def send(self, req: pb.WatchRequest | None) -> None:
        self._requests.put_nowait(req)

    async def recv(self, timeout: float = 10.0, expected: str = "") -> pb.WatchResponse:
        """The next response; fails with `expected` (what did not happen) after `timeout`."""
        if self._stash:
            return self._stash.pop(0)
        if timeout <= 0:
            pytest.fail(expected or "no watch response in time")
        try:
            resp = await asyncio.wait_for(self.call.read(), timeout)
        except TimeoutError:
            pytest.fail(expected or f"no watch response within {timeout:.1f}s")
        assert resp is not grpc.aio.EOF, "the watch stream ended"  # type: ignore[attr-defined]
        assert isinstance(resp, pb.WatchResponse)
        return resp

    async def create(self, key: bytes, range_end: bytes = b"", **kw: Any) -> pb.WatchResponse:
        """Create a watch; returns its `created` response (other responses stay queued)."""
        self.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key, range_end=range_end, **kw)))
        skipped = []
        try:
            while True:
                resp = await self.recv()
                if resp.created:
                    return resp
                skipped.append(resp)
        finally:
            self._stash[:0] = skipped

    async def watch(self, key: bytes, range_end: bytes = b"", **kw: Any) -> int:
        resp = await self.create(key, range_end, **kw)
        assert not resp.canceled, resp.cancel_reason
        return int(resp.watch_id)

    async def until_progress(self, timeout: float = 10.0) -> tuple[list[pb.WatchResponse], int]:
        """Request progress; returns the responses that came before its answer, and its revision.
        Everything the node had for this stream when it got the request comes before."""
        self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        got: list[pb.WatchResponse] = []
        deadline = time.monotonic() + timeout
        while True:
            resp = await self.recv(max(0.01, deadline - time.monotonic()))
            if resp.watch_id == -1 and not resp.events and not resp.created:
                return got, int(resp.header.revision)
            got.append(resp)

    async def events_for(self, wid: int, until: Callable[[list[pb.Event]], bool],
                         timeout: float = 10.0) -> list[pb.WatchResponse]:
        """Responses carrying events for watch `wid` until `until(all events so far)`."""
        out: list[pb.WatchResponse] = []
        evs: list[pb.Event] = []
        deadline = time.monotonic() + timeout
        while not until(evs):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; got {[(e.type, e.kv.key) for e in evs]}"
            resp = await self.recv(left)
            if resp.watch_id != wid or not resp.events:
                assert not (resp.watch_id == wid and resp.canceled), resp.cancel_reason
                continue
            out.append(resp)
            evs.extend(resp.events)
        return out

    async def close(self) -> None:
        self.send(None)
        self.call.cancel()
        await self.channel.close(None)


class KV:
    def __init__(self, addr: str) -> None:
        self.channel = grpc.aio.insecure_channel(addr)
        self.kv: Any = pbg.KVStub(self.channel)
        self.maint: Any = pbg.MaintenanceStub(self.channel)

    async def put(self, key: bytes, value: bytes = b"v", timeout: float = 10, **kw: Any) -> int:
        r = await self.kv.Put(pb.PutRequest(key=key, value=value, **kw), timeout=timeout)
        return int(r.header.revision)

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        r = await self.kv.DeleteRange(pb.DeleteRangeRequest(key=key, range_end=range_end),
                                      timeout=10)
        return int(r.header.revision)

    async def status(self) -> pb.StatusResponse:
        r: pb.StatusResponse = await self.maint.Status(pb.StatusRequest(), timeout=5)
        return r

    async def close(self) -> None:
        await self.channel.close(None)


def flat(resps: list[pb.WatchResponse]) -> list[tuple[int, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.mod_revision) for r in resps for e in r.events]


def wcluster_settings(c: ProcessCluster) -> ClusterSettings:
    """The settings the cluster's nodes run with (its cluster.toml)."""
    return load_config(c.config_path).settings


def roles(c: ProcessCluster) -> tuple[str, list[str]]:
    leader = c.wait_leader()
    return leader, [n for n in c.names if n != leader]


# ---------------------------------------------------------------------------------------------


async def test_one_stream_many_watches_key_prefix_and_range(wcluster: ProcessCluster) -> None:
    _, (f1, _) = roles(wcluster)
    w, kv = Watcher(wcluster.client[f1]), KV(wcluster.client[f1])
    try:
        k_a = await w.watch(b"mw/a")
        k_pre = await w.watch(b"mw/", prefix_range_end(b"mw/"))
        k_rng = await w.watch(b"mw/b", b"mw/d")
        assert len({k_a, k_pre, k_rng}) == 3, "watch ids must be distinct"
        revs = {}
        for k in (b"mw/a", b"mw/b", b"mw/c", b"mw/d", b"mx"):
            revs[k] = await kv.put(k)
        rdel = await kv.delete(b"mw/a")
        got, prog = await w.until_progress()
        assert prog >= rdel
        by_id: dict[int, list[pb.WatchResponse]] = {}
        for r in got:
            by_id.setdefault(int(r.watch_id), []).append(r)
        assert set(by_id) <= {k_a, k_pre, k_rng}
        assert flat(by_id[k_a]) == [(PUT, b"mw/a", revs[b"mw/a"]), (DELETE, b"mw/a", rdel)]
        assert flat(by_id[k_pre]) == [(PUT, k, revs[k]) for k in (b"mw/a", b"mw/b", b"mw/c",
                                                                   b"mw/d")] + [
            (DELETE, b"mw/a", rdel)]
        assert flat(by_id[k_rng]) == [(PUT, b"mw/b", revs[b"mw/b"]),
                                      (PUT, b"mw/c", revs[b"mw/c"])]
        for r in got:
            assert r.header.revision >= max(e.kv.mod_revision for e in r.events)
    finally:
        await w.close()
        await kv.close()


async def test_past_revision_catch_up_then_live_no_gap_no_dup(wcluster: ProcessCluster) -> None:
    _, (f1, f2) = roles(wcluster)
    kv = KV(wcluster.client[f2])
    w = Watcher(wcluster.client[f1])
    acked: list[int] = []
    try:
        for i in range(60):
            acked.append(await kv.put(b"cu/%03d" % i, b"%d" % i))
        n = 60

        async def writer() -> None:  # live writes racing the catch-up
            for i in range(n, n + 60):
                acked.append(await kv.put(b"cu/%03d" % i, b"%d" % i))

        task = asyncio.create_task(writer())
        wid = await w.watch(b"cu/", prefix_range_end(b"cu/"), start_revision=acked[0])
        await task
        resps = await w.events_for(wid, lambda evs: len(evs) >= len(acked))
        got, _ = await w.until_progress()
        resps += [r for r in got if r.watch_id == wid and r.events]
        revs = [e.kv.mod_revision for r in resps for e in r.events]
        assert revs == sorted(acked), "catch-up then live must be gap-free, dup-free, in order"
        keys = [e.kv.key for r in resps for e in r.events]
        assert keys == [b"cu/%03d" % i for i in range(n + 60)]
        # Starting at the current revision sees only what comes after.
        wid2 = await w.watch(b"cu/", prefix_range_end(b"cu/"))
        r_next = await kv.put(b"cu/after")
        (only,) = await w.events_for(wid2, lambda evs: len(evs) >= 1)
        assert flat([only]) == [(PUT, b"cu/after", r_next)]
    finally:
        await w.close()
        await kv.close()


async def test_prev_kv_only_on_request_and_filters(wcluster: ProcessCluster) -> None:
    _, (f1, _) = roles(wcluster)
    w, kv = Watcher(wcluster.client[f1]), KV(wcluster.client[f1])
    try:
        plain = await w.watch(b"pk/k")
        with_prev = await w.watch(b"pk/k", prev_kv=True)
        no_put = await w.watch(b"pk/k", filters=[pb.WatchCreateRequest.NOPUT])
        no_del = await w.watch(b"pk/k", filters=[pb.WatchCreateRequest.NODELETE])
        r1 = await kv.put(b"pk/k", b"one")
        r2 = await kv.put(b"pk/k", b"two")
        r3 = await kv.delete(b"pk/k")
        got, _ = await w.until_progress()
        by: dict[int, list[pb.Event]] = {}
        for r in got:
            by.setdefault(int(r.watch_id), []).extend(r.events)
        assert [(e.type, e.kv.mod_revision) for e in by[plain]] == [
            (PUT, r1), (PUT, r2), (DELETE, r3)]
        assert all(not e.HasField("prev_kv") for e in by[plain])
        assert [e.prev_kv.value if e.HasField("prev_kv") else None for e in by[with_prev]] == [
            None, b"one", b"two"]
        assert [(e.type, e.kv.mod_revision) for e in by[no_put]] == [(DELETE, r3)]
        assert [(e.type, e.kv.mod_revision) for e in by[no_del]] == [(PUT, r1), (PUT, r2)]
        assert by[plain][1].kv.value == b"two" and by[plain][1].kv.version == 2
    finally:
        await w.close()
        await kv.close()


async def test_txn_revision_is_never_split(wcluster: ProcessCluster) -> None:
    leader, _ = roles(wcluster)
    w, kv = Watcher(wcluster.client[leader]), KV(wcluster.client[leader])
    try:
        wid = await w.watch(b"tx/", prefix_range_end(b"tx/"))
        await kv.put(b"tx/gone")
        before = await kv.put(b"tx/before")
        txn = pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"tx/%d" % i, value=b"x"))
            for i in range(20)
        ] + [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"tx/gone"))])
        tr = await kv.kv.Txn(txn, timeout=10)
        rev = tr.header.revision
        assert rev == before + 1
        resps = await w.events_for(wid, lambda evs: any(e.kv.mod_revision == rev for e in evs))
        with_rev = [r for r in resps if any(e.kv.mod_revision == rev for e in r.events)]
        assert len(with_rev) == 1, "a revision must arrive in one response"
        (r,) = with_rev
        assert [e.kv.mod_revision for e in r.events if e.kv.mod_revision == rev] == [rev] * 21
        assert sorted(e.kv.key for e in r.events if e.type == PUT and e.kv.mod_revision == rev
                      ) == sorted(b"tx/%d" % i for i in range(20))
        assert [e.kv.key for e in r.events if e.type == DELETE] == [b"tx/gone"]
    finally:
        await w.close()
        await kv.close()


async def test_progress_on_request_and_periodic(wcluster: ProcessCluster) -> None:
    _, (f1, f2) = roles(wcluster)
    w, kv = Watcher(wcluster.client[f1]), KV(wcluster.client[f1])
    try:
        quiet = await w.watch(b"pg/quiet", progress_notify=True)
        silent = await w.watch(b"pg/silent")  # did not ask for periodic progress
        last = await kv.put(b"pg/other")  # outside both watches
        got, rev = await w.until_progress()
        assert rev >= last
        assert not [r for r in got if r.events]
        # Periodic: only the watch that asked, with no events and an up-to-date revision. Two
        # notifications are due within two intervals; allow five times that.
        wait = 10 * PROGRESS_INTERVAL
        t0 = time.monotonic()
        seen: list[pb.WatchResponse] = []
        while len([r for r in seen if r.watch_id == quiet]) < 2:
            left = t0 + wait - time.monotonic()
            msg = (f"fewer than 2 periodic progress notifications within {wait:.1f}s "
                   f"(interval {PROGRESS_INTERVAL}s)")
            seen.append(await w.recv(timeout=left, expected=msg))
        assert all(not r.events and not r.canceled for r in seen)
        assert not [r for r in seen if r.watch_id == silent]
        assert all(r.header.revision >= last for r in seen if r.watch_id == quiet)
        # Periodic progress tracks writes outside the watched key too: due one interval after
        # f1 applied the write (a healthy follower hears of a commit well within an election
        # timeout); allow five times that.
        other = KV(wcluster.client[f2])
        last2 = await other.put(b"pg/other2")
        await other.close()
        wait = 5 * (PROGRESS_INTERVAL + wcluster_settings(wcluster).election_timeout_max)
        t1 = time.monotonic()
        while True:
            left = t1 + wait - time.monotonic()
            msg = f"no periodic progress at revision >= {last2} within {wait:.1f}s"
            r = await w.recv(timeout=left, expected=msg)
            if r.watch_id == quiet and r.header.revision >= last2:
                break
    finally:
        await w.close()
        await kv.close()


async def test_cancel_stops_delivery(wcluster: ProcessCluster) -> None:
    _, (f1, _) = roles(wcluster)
    w, kv = Watcher(wcluster.client[f1]), KV(wcluster.client[f1])
    try:
        a = await w.watch(b"cx/k")
        b = await w.watch(b"cx/k")
        await kv.put(b"cx/k", b"1")
        await w.events_for(a, lambda evs: len(evs) == 1)
        w.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=a)))
        got, _ = await w.until_progress()
        assert [r.watch_id for r in got if r.canceled] == [a]
        r2 = await kv.put(b"cx/k", b"2")
        got, _ = await w.until_progress()
        assert [(r.watch_id, flat([r])) for r in got if r.events] == [
            (b, [(PUT, b"cx/k", r2)])]
        assert all(r.watch_id != a for r in got)
    finally:
        await w.close()
        await kv.close()


async def test_watch_below_compaction_is_cancelled_with_compact_revision(
    wcluster: ProcessCluster,
) -> None:
    leader, (f1, _) = roles(wcluster)
    kv = KV(wcluster.client[leader])
    w = Watcher(wcluster.client[f1])
    try:
        first = await kv.put(b"cp/k", b"1")
        await kv.put(b"cp/k", b"2")
        last = await kv.put(b"cp/k", b"3")
        await kv.kv.Compact(pb.CompactionRequest(revision=last), timeout=10)
        # The follower applies the compaction before a linearizable read there returns.
        fkv = KV(wcluster.client[f1])
        await fkv.kv.Range(pb.RangeRequest(key=b"cp/k"), timeout=10)
        await fkv.close()
        resp = await w.create(b"cp/k", start_revision=first)
        if not resp.canceled:  # etcd sends created, then the cancel
            resp = await w.recv()
        assert resp.canceled
        assert resp.compact_revision == last
        assert resp.cancel_reason
        # At the compaction point itself the watch works.
        ok = await w.watch(b"cp/k", start_revision=last)
        (r,) = await w.events_for(ok, lambda evs: len(evs) >= 1)
        assert flat([r]) == [(PUT, b"cp/k", last)]
    finally:
        await w.close()
        await kv.close()


async def test_every_node_sees_exactly_the_committed_sequence(wcluster: ProcessCluster) -> None:
    leader, (f1, f2) = roles(wcluster)
    watchers = {n: Watcher(wcluster.client[n]) for n in wcluster.names}
    kv = KV(wcluster.client[f1])
    try:
        wids = {n: await w.watch(b"seq/", prefix_range_end(b"seq/")) for n, w in watchers.items()}
        acked: list[int] = []

        async def writer(j: int) -> None:
            for i in range(50):
                key = b"seq/%d/%d" % (j, i)
                if i % 7 == 3:
                    acked.append(await kv.delete(b"seq/%d/%d" % (j, i - 1)))
                else:
                    acked.append(await kv.put(key, b"%d" % i))

        await asyncio.gather(*(writer(j) for j in range(4)))
        want = sorted(acked)
        streams = {}
        for n, w in watchers.items():
            resps = await w.events_for(wids[n], lambda evs: len(evs) >= len(want))
            streams[n] = [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision)
                          for r in resps for e in r.events]
            assert [s[3] for s in streams[n]] == want, f"node {n} saw another sequence"
        assert streams[leader] == streams[f1] == streams[f2]
    finally:
        for w in watchers.values():
            await w.close()
        await kv.close()


async def test_slow_watcher_catches_up_without_slowing_anyone(
    wcluster: ProcessCluster,
) -> None:
    """Behaviour on a real node: puts keep being acknowledged while a watcher that never reads
    is backed up far past the node's buffer, neither watcher is cancelled, and once the slow
    client reads again it gets every event exactly once, in order (caught up from history).
    No put waits anywhere near a proposal timeout. That publishing never waits for a consumer
    is stated exactly by tests/server/test_watch_hub.py; here no wall-clock comparison between
    runs is made."""
    _, (f1, _) = roles(wcluster)
    node = f1
    kv = KV(wcluster.client[node])
    # A client that never reads, with a small HTTP/2 window so the server side backs up.
    slow = Watcher(wcluster.client[node], options=[
        ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)])
    fast = Watcher(wcluster.client[node])
    # A node whose apply was stalled by a watcher would answer "outcome unknown" after the
    # proposal timeout: every put must be acknowledged well within twice that.
    put_bound = 2 * wcluster_settings(wcluster).propose_timeout_s
    try:
        value = b"x" * 2048

        async def put_all(n: int, prefix: bytes) -> tuple[list[int], list[float]]:
            revs, lats = [], []
            for i in range(n):
                t = time.perf_counter()
                try:
                    revs.append(await kv.put(prefix + b"%d" % i, value, timeout=put_bound))
                except grpc.aio.AioRpcError as e:
                    pytest.fail(f"put #{i} with a slow watcher was not acknowledged within "
                                f"{put_bound:.0f}s (2 x propose_timeout_s): {e.code()} "
                                f"{e.details()}")
                lats.append(time.perf_counter() - t)
            return revs, lats

        _, baseline = await put_all(100, b"sl/warm/")
        base_watchers = (await kv.status()).watchers
        slow_id = await slow.watch(b"sl/", prefix_range_end(b"sl/"))
        fast_id = await fast.watch(b"sl/", prefix_range_end(b"sl/"))
        assert (await kv.status()).watchers == base_watchers + 2
        n = 4 * BUFFER_EVENTS + 500
        revs, during = await put_all(n, b"sl/k/")
        resps = await fast.events_for(fast_id, lambda evs: len(evs) >= n, timeout=put_bound)
        assert [e.kv.mod_revision for r in resps for e in r.events] == revs
        assert (await kv.status()).watchers == base_watchers + 2, "a watcher was cancelled"
        b50, d50 = statistics.median(baseline), statistics.median(during)
        print(f"\nput latency p50 before {b50 * 1e3:.2f} ms, with a slow watcher "
              f"{d50 * 1e3:.2f} ms (max {max(during) * 1e3:.2f} ms; bound {put_bound:.0f} s)")
        # The slow client reads at last: every event once, in order, and no cancel.
        resps = await slow.events_for(slow_id, lambda evs: len(evs) >= n, timeout=put_bound)
        assert not [r for r in resps if r.canceled]
        assert [e.kv.mod_revision for r in resps for e in r.events] == revs
        assert (await kv.status()).watchers == base_watchers + 2
    finally:
        await slow.close()
        await fast.close()
        await kv.close()


async def test_invalid_watch_request_is_refused_on_the_stream(wcluster: ProcessCluster) -> None:
    w = Watcher(wcluster.client[wcluster.names[0]])
    try:
        resp = await w.create(b"")
        assert resp.canceled and resp.cancel_reason
        # The stream stays usable.
        ok = await w.watch(b"iv/k")
        assert ok
    finally:
        await w.close()


async def test_bad_range_is_refused_and_the_stream_stays_usable(wcluster: ProcessCluster) -> None:
    w = Watcher(wcluster.client[wcluster.names[0]])
    try:
        resp = await w.create(b"br/b", b"br/a", start_revision=1)
        if not resp.canceled:
            resp = await w.recv()
        assert resp.canceled and resp.cancel_reason
        ok = await w.watch(b"br/k")
        assert ok
    finally:
        await w.close()


async def test_client_chosen_watch_ids_are_per_stream(wcluster: ProcessCluster) -> None:
    a, b = (Watcher(wcluster.client[wcluster.names[0]]) for _ in range(2))
    kv = KV(wcluster.client[wcluster.names[0]])
    try:
        assert await a.watch(b"id/k", watch_id=7) == 7
        assert await b.watch(b"id/k", watch_id=7) == 7, "another stream's id 7 is not ours"
        auto = await b.watch(b"id/k")
        assert auto != 7
        dup = await a.create(b"id/k", watch_id=7)
        assert dup.canceled and dup.cancel_reason, "a duplicate id on the same stream is refused"
        rev = await kv.put(b"id/k")
        for w in (a, b):
            (r,) = await w.events_for(7, lambda evs: len(evs) >= 1)
            assert flat([r]) == [(PUT, b"id/k", rev)]
    finally:
        await a.close()
        await b.close()
        await kv.close()


async def test_catch_up_longer_than_the_buffer_is_delivered(wcluster: ProcessCluster) -> None:
    """A watch from a past revision with more history than the slow-watcher buffer is not a
    slow watcher: it gets all of it, in order, in bounded messages."""
    leader, (f1, _) = roles(wcluster)
    kv = KV(wcluster.client[leader])
    w = Watcher(wcluster.client[f1])
    try:
        n = 2 * BUFFER_EVENTS + 50
        sem = asyncio.Semaphore(16)
        acked: list[int] = []

        async def put(i: int) -> None:
            async with sem:
                acked.append(await kv.put(b"big/%04d" % i, b"y" * 1024))

        await asyncio.gather(*(put(i) for i in range(n)))
        wid = await w.watch(b"big/", prefix_range_end(b"big/"), start_revision=min(acked))
        resps = await w.events_for(wid, lambda evs: len(evs) >= n, timeout=20)
        assert [e.kv.mod_revision for r in resps for e in r.events] == sorted(acked)
        assert max(len(r.events) for r in resps) <= BUFFER_EVENTS
        live = await kv.put(b"big/live")
        (r,) = await w.events_for(wid, lambda evs: len(evs) >= 1)
        assert flat([r]) == [(PUT, b"big/live", live)]
    finally:
        await w.close()
        await kv.close()


async def test_progress_revision_never_runs_ahead_of_events(wcluster: ProcessCluster) -> None:
    """After a progress response at revision R, no event at or below R may still arrive."""
    leader, (f1, f2) = roles(wcluster)
    w = Watcher(wcluster.client[f1])
    kvs = [KV(wcluster.client[n]) for n in (leader, f2)]
    try:
        wid = await w.watch(b"pr/", prefix_range_end(b"pr/"))
        stop = asyncio.Event()

        async def writer(kv: KV, j: int) -> None:
            i = 0
            while not stop.is_set():
                await kv.put(b"pr/%d/%d" % (j, i))
                i += 1

        writers = [asyncio.create_task(writer(kvs[j % 2], j)) for j in range(6)]
        progress_rev = 0
        checked = rounds = 0
        # Stop on what was checked, not on a clock: enough events interleaved with enough
        # progress answers, however fast or slow the machine is.
        try:
            while checked < 300 or rounds < 30:
                rounds += 1
                assert rounds < 5000, f"only {checked} events in {rounds} progress rounds"
                w.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                while True:
                    r = await w.recv()
                    if r.watch_id == wid:
                        for e in r.events:
                            assert e.kv.mod_revision > progress_rev, (
                                f"event at {e.kv.mod_revision} after progress at {progress_rev}")
                            checked += 1
                    elif r.watch_id == -1:
                        assert r.header.revision >= progress_rev
                        progress_rev = r.header.revision
                        break
        finally:
            stop.set()
            await asyncio.gather(*writers)
    finally:
        await w.close()
        for kv in kvs:
            await kv.close()
