"""MemoryRegistryClient: the protocol over the real store, watch semantics, leases on a manual
clock. Everything is in-process; no test waits on wall-clock time."""

from __future__ import annotations

import asyncio

import pytest

from raftreg.client import (
    ManualClock,
    MemoryRegistryClient,
    RegistryClient,
    Watch,
    WatchBatch,
    WatchFilter,
)
from raftreg.client.resumable_watch import WatchOptions
from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    Event,
    EventType,
    KeyValue,
    Put,
    Txn,
)
from raftreg.errors import (
    Compacted,
    FailedPrecondition,
    InvalidArgument,
    LeaseNotFound,
    Unavailable,
)
from raftreg.store import Store
from raftreg.store.commands import LeaseGrant, Request

pytestmark = pytest.mark.timeout(10)


async def next_batch(w: Watch, timeout: float = 2.0) -> WatchBatch:
    return await asyncio.wait_for(w.__anext__(), timeout)


def drained(w: Watch) -> list[WatchBatch]:
    """The batches already queued on `w` (without waiting)."""
    out: list[WatchBatch] = []
    while w._queue:
        out.append(w._queue.popleft())
    return out


def revs(batches: list[WatchBatch]) -> list[int]:
    return [e.kv.mod_revision for b in batches for e in b.events]


async def test_satisfies_the_protocol() -> None:
    m = MemoryRegistryClient()
    assert isinstance(m, RegistryClient)
    assert m.endpoints == ("memory:0",)
    st = await m.status()
    assert st.is_leader and st.revision == 1
    assert [x.name for x in await m.member_list()] == ["memory"]
    await m.close()
    with pytest.raises(FailedPrecondition):
        await m.get("k")


async def test_kv_txn_and_errors() -> None:
    async with MemoryRegistryClient() as m:
        r = await m.put("a", "1")
        assert r.revision == 2
        assert (await m.put("a", "2", prev_kv=True)).prev_kv is not None
        got = await m.get("a")
        assert got.kvs[0].value == b"2" and got.kvs[0].version == 2
        await m.put("b/1", "x")
        await m.put("b/2", "y")
        assert (await m.get("b/", prefix=True, count_only=True)).count == 2
        t = await m.txn(
            Txn(
                compare=(Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"2"),),
                success=(Put(b"c", b"3"),),
            )
        )
        assert t.succeeded
        assert (await m.delete("b/", prefix=True)).deleted == 2
        await m.compact(3)
        with pytest.raises(Compacted) as ei:
            await m.get("a", revision=2)
        assert ei.value.compact_revision == 3
        with pytest.raises(LeaseNotFound):
            await m.put("k", "v", lease=12345)
        m.set_unavailable(True)
        with pytest.raises(Unavailable):
            await m.get("a")
        m.set_unavailable(False)
        assert (await m.get("a")).kvs


async def test_watch_prefix_delivers_every_revision_in_order() -> None:
    async with MemoryRegistryClient() as m:
        w = await m.watch("svc/", prefix=True)
        await m.put("svc/a", "1")
        await m.put("other", "x")  # not selected
        await m.put("svc/b", "2")
        await m.delete("svc/a")
        await m.txn(Txn(success=(Put(b"svc/c", b"3"), Put(b"svc/d", b"4"))))
        b1, b2, b3, b4 = [await next_batch(w) for _ in range(4)]
        assert [(e.type, e.kv.key) for e in b1.events] == [(EventType.PUT, b"svc/a")]
        assert b1.revision == 2
        assert b2.events[0].kv.key == b"svc/b"
        assert b3.events[0].type == EventType.DELETE and b3.events[0].prev_kv is None
        # A txn's revision arrives whole, in one batch.
        assert [e.kv.key for e in b4.events] == [b"svc/c", b"svc/d"]
        assert {e.kv.mod_revision for e in b4.events} == {6}
        assert w.last_event_revision == 6 and w.resume_revision == 7


async def test_watch_prev_kv_and_filters() -> None:
    async with MemoryRegistryClient() as m:
        await m.put("k", "old")
        with_prev = await m.watch("k", prev_kv=True)
        no_put = await m.watch("k", filters=[WatchFilter.NOPUT])
        await m.put("k", "new")
        await m.delete("k")
        b = await next_batch(with_prev)
        assert b.events[0].prev_kv is not None and b.events[0].prev_kv.value == b"old"
        d = await next_batch(no_put)
        assert [e.type for e in d.events] == [EventType.DELETE]
        assert not drained(no_put)


async def test_watch_from_a_past_revision_catches_up_without_duplicates() -> None:
    async with MemoryRegistryClient() as m:
        for i in range(5):
            await m.put(f"k{i}", str(i))  # revisions 2..6
        w = await m.watch("k", range_end="l", start_revision=4)
        first = await next_batch(w)
        assert revs([first]) == [4, 5, 6]
        await m.put("k9", "9")
        assert revs([await next_batch(w)]) == [7]


async def test_watch_below_the_compaction_point_yields_one_compacted_batch() -> None:
    async with MemoryRegistryClient() as m:
        for i in range(6):
            await m.put("k", str(i))  # revisions 2..7
        await m.compact(5)
        w = await m.watch("k", start_revision=3)
        b = await next_batch(w)
        assert b.compacted and b.compact_revision == 5 and not b.events
        with pytest.raises(StopAsyncIteration):
            await next_batch(w)
        assert w.done
        ok = await m.watch("k", start_revision=5)  # the compaction point itself is readable
        assert revs([await next_batch(ok)]) == [5, 6, 7]


async def test_list_then_watch_covers_every_change_after_the_snapshot() -> None:
    async with MemoryRegistryClient() as m:
        await m.put("/services/a/1", "x")
        await m.put("/services/a/2", "y")
        snap, w = await m.list_then_watch("/services/a/")
        assert [kv.key for kv in snap.kvs] == [b"/services/a/1", b"/services/a/2"]
        await m.delete("/services/a/1")
        b = await next_batch(w)
        assert b.events[0].type == EventType.DELETE
        assert b.events[0].kv.mod_revision == snap.revision + 1


async def test_progress_only_for_watches_that_asked_but_both_advance() -> None:
    async with MemoryRegistryClient() as m:
        await m.put("x", "1")
        loud = await m.watch("k", progress_notify=True)
        quiet = await m.watch("k")
        await m.put("x", "2")  # revision 3, not on "k"
        await m.request_progress()
        b = await next_batch(loud)
        assert b.progress and b.revision == 3 and not b.events
        assert not drained(quiet)
        assert loud.resume_revision == quiet.resume_revision == 4


async def test_cancel_and_close_end_iteration() -> None:
    m = MemoryRegistryClient()
    a = await m.watch("a")
    b = await m.watch("b")
    async with a:
        pass  # leaving the block cancels
    with pytest.raises(StopAsyncIteration):
        await next_batch(a)
    await m.put("a", "1")  # nothing to a cancelled watch
    assert m.watch_count == 1

    waiting = asyncio.ensure_future(next_batch(b))
    await asyncio.sleep(0)
    await m.close()
    with pytest.raises(StopAsyncIteration):
        await waiting


async def test_bad_watches_are_refused() -> None:
    async with MemoryRegistryClient() as m:
        with pytest.raises(InvalidArgument):
            await m.watch("")
        with pytest.raises(InvalidArgument):
            await m.watch("k", start_revision=-1)
        with pytest.raises(InvalidArgument):
            await m.watch("k", range_end="z", prefix=True)
        # prefix b"" means every key: rewritten to key b"\0".
        w = await m.watch("", prefix=True)
        assert w.options.key == b"\0" and w.options.range_end == b"\0"
        await m.put("anything", "1")
        assert revs([await next_batch(w)]) == [2]


async def test_lease_expiry_on_the_manual_clock() -> None:
    clock = ManualClock()
    async with MemoryRegistryClient(clock=clock, seed=7) as m:
        lease = await m.lease_grant(10)
        await m.put("svc/i1", "addr", lease=lease.id)
        w = await m.watch("svc/", prefix=True)
        assert (await m.lease_time_to_live(lease.id, keys=True)).keys == (b"svc/i1",)
        assert m.advance(4) == []
        assert (await m.lease_time_to_live(lease.id)).ttl == 6
        assert await m.lease_keepalive_once(lease.id) == 10  # deadline now 14
        assert m.advance(9.5) == []
        assert m.advance(0.5) == [lease.id]
        b = await next_batch(w)
        assert [(e.type, e.kv.key) for e in b.events] == [(EventType.DELETE, b"svc/i1")]
        assert (await m.lease_time_to_live(lease.id)).ttl == -1
        assert await m.lease_keepalive_once(lease.id) == 0
        assert await m.lease_list() == []
        with pytest.raises(LeaseNotFound):
            await m.lease_revoke(lease.id)


async def test_min_ttl_explicit_ids_and_revoke() -> None:
    async with MemoryRegistryClient(min_lease_ttl=2) as m:
        r = await m.lease_grant(1, id=0x1234)
        assert (r.id, r.ttl) == (0x1234, 2)
        await m.put("k", "v", lease=r.id)
        await m.lease_revoke(r.id)
        assert (await m.get("k")).kvs == ()
        with pytest.raises(InvalidArgument):
            await m.lease_grant(0)


async def test_a_given_store_is_used_and_its_leases_get_a_fresh_ttl() -> None:
    store = Store()
    store.apply(Request(LeaseGrant(0x42, 5)))
    store.apply(Request(Put(b"k", b"v", 0x42)))
    async with MemoryRegistryClient(store=store) as m:
        assert (await m.get("k")).kvs[0].lease == 0x42
        assert (await m.lease_time_to_live(0x42)).ttl == 5
        assert m.advance(5) == [0x42]
        assert store.key_count() == 0


def test_watch_dedup_is_the_second_line_of_defence() -> None:
    w = Watch(WatchOptions(b"k"), lambda _w: None)

    def ev(rev: int) -> Event:
        return Event(EventType.PUT, KeyValue(b"k", rev, rev, 1, b"v"))

    w._on_created(9)
    assert w.resume_revision == 10
    w._on_events(11, [ev(10), ev(11)])
    w._on_events(12, [ev(11), ev(12)])  # 11 again: dropped
    w._on_events(12, [ev(12)])  # all old: no batch
    w._on_progress(20)
    assert w.resume_revision == 21
    w._on_progress(15)  # never moves back
    assert w.resume_revision == 21
    assert [revs([b]) for b in drained(w)] == [[10, 11], [12]]
    w._on_compacted(30, 40)
    w._on_events(50, [ev(50)])  # after the end: ignored
    assert [b.compacted for b in drained(w)] == [True]
