"""Watches: one contract for every backend (see conftest)."""

from __future__ import annotations

import asyncio
import time

import pytest

from raftreg.client import RegistryClient, Watch, WatchBatch, WatchFilter
from raftreg.common.types import Event, EventType
from tests.contract.conftest import WAIT, Backend, backend_differs

pytestmark = pytest.mark.slow


async def watches_caught_up(registry: RegistryClient, key: str) -> None:
    """Until the member serving `registry`'s watches (one stream for all of them) has applied
    everything written before the call: a write to `key`, then a watch from its revision sees
    it only once that member has applied it, and so everything before it too. (A watch is
    served by one member, which may lag behind the one that acknowledged a write.)"""
    r = await registry.put(key, "sync")
    async with await registry.watch(key, start_revision=r.revision) as w:
        await asyncio.wait_for(w.__anext__(), WAIT)


async def events(w: Watch, n: int, timeout: float = WAIT) -> list[Event]:
    got: list[Event] = []
    while len(got) < n:
        b = await asyncio.wait_for(w.__anext__(), timeout)
        got.extend(b.events)
    return got


async def test_a_watch_sees_puts_and_deletes_in_order_with_prev_kv(
    registry: RegistryClient, prefix: str
) -> None:
    w = await registry.watch(prefix, prefix=True, prev_kv=True)
    r1 = await registry.put(prefix + "a", "1")
    r2 = await registry.put(prefix + "a", "2")
    d = await registry.delete(prefix + "a")
    await registry.put(prefix[:-1] + "0", "outside")
    got = await events(w, 3)
    assert [e.type for e in got] == [EventType.PUT, EventType.PUT, EventType.DELETE]
    assert [e.kv.mod_revision for e in got] == [r1.revision, r2.revision, d.revision]
    assert got[0].prev_kv is None
    assert got[1].prev_kv is not None and got[1].prev_kv.value == b"1"
    assert got[2].kv.value == b"" and got[2].kv.version == 0
    assert got[2].prev_kv is not None and got[2].prev_kv.value == b"2"
    w.cancel()


async def test_a_watch_from_an_old_revision_replays_history(
    registry: RegistryClient, prefix: str
) -> None:
    revs = [(await registry.put(prefix + "k", str(i))).revision for i in range(5)]
    async with await registry.watch(prefix + "k", start_revision=revs[2]) as w:
        got = await events(w, 3)
    assert [e.kv.value for e in got] == [b"2", b"3", b"4"]


async def test_filters_drop_puts_or_deletes(registry: RegistryClient, prefix: str) -> None:
    no_put = await registry.watch(prefix, prefix=True, filters=[WatchFilter.NOPUT])
    no_delete = await registry.watch(prefix, prefix=True, filters=[WatchFilter.NODELETE])
    await registry.put(prefix + "a", "1")
    await registry.delete(prefix + "a")
    await registry.put(prefix + "b", "2")
    assert [e.type for e in await events(no_put, 1)] == [EventType.DELETE]
    assert [e.kv.key for e in await events(no_delete, 2)] == [
        (prefix + "a").encode(), (prefix + "b").encode()]
    no_put.cancel()
    no_delete.cancel()


async def test_many_writes_arrive_without_gap_or_duplicate(
    registry: RegistryClient, prefix: str
) -> None:
    w = await registry.watch(prefix, prefix=True)
    revs = await asyncio.gather(*(registry.put(f"{prefix}{i % 7}", str(i)) for i in range(100)))
    got = await events(w, 100)
    assert sorted(e.kv.mod_revision for e in got) == sorted(r.revision for r in revs)
    assert [e.kv.mod_revision for e in got] == sorted(e.kv.mod_revision for e in got)
    w.cancel()


async def test_list_then_watch_misses_nothing_in_between(
    registry: RegistryClient, prefix: str
) -> None:
    await registry.put(prefix + "a", "1")
    snap, w = await registry.list_then_watch(prefix)
    assert [kv.value for kv in snap.kvs] == [b"1"]
    r = await registry.put(prefix + "b", "2")
    (e,) = await events(w, 1)
    assert e.kv.key == (prefix + "b").encode() and e.kv.mod_revision == r.revision
    assert w.resume_revision == r.revision + 1
    w.cancel()


async def test_a_compacted_start_yields_one_compacted_batch_then_ends(
    registry: RegistryClient, backend: Backend, prefix: str
) -> None:
    r1 = await registry.put(prefix + "k", "1")
    r2 = await registry.put(prefix + "k", "2")
    await registry.compact(r2.revision)
    await watches_caught_up(registry, prefix + "sync")  # the compaction included
    w = await registry.watch(prefix + "k", start_revision=r1.revision)
    batches: list[WatchBatch] = [b async for b in w]
    (b,) = batches
    assert b.compacted and b.compact_revision >= r2.revision and b.events == ()
    # etcd sends the compaction notice with an empty header (revision 0); raftreg's (and
    # memory's) carries the store revision.
    if backend_differs(backend, raftreg=True, etcd=False, memory=True):
        assert b.revision >= r2.revision
    else:
        assert b.revision == 0


async def test_request_progress_reports_the_current_revision(
    registry: RegistryClient, prefix: str
) -> None:
    w = await registry.watch(prefix, prefix=True, progress_notify=True)
    r = await registry.put("contract/elsewhere/" + prefix, "x")  # not on the watched range
    # The revision reported is the serving member's, which may not have applied the put yet:
    # asked again (bounded) until it has.
    deadline = time.monotonic() + WAIT
    while True:
        await registry.request_progress()
        b = await asyncio.wait_for(w.__anext__(), WAIT)
        assert b.progress and b.events == ()
        assert w.resume_revision == b.revision + 1
        if b.revision >= r.revision:
            break
        assert time.monotonic() < deadline, f"progress stuck at {b.revision} < {r.revision}"
        await asyncio.sleep(0.05)
    w.cancel()


async def test_cancel_ends_iteration_and_other_watches_go_on(
    registry: RegistryClient, prefix: str
) -> None:
    a = await registry.watch(prefix, prefix=True)
    b = await registry.watch(prefix, prefix=True)
    a.cancel()
    await registry.put(prefix + "k", "v")
    assert [x async for x in a] == []
    assert len(await events(b, 1)) == 1
    b.cancel()


async def test_closing_the_client_ends_its_watches(registry: RegistryClient, prefix: str) -> None:
    # `registry`'s own close (the fixture's close afterwards is a no-op: close is idempotent)
    w = await registry.watch(prefix, prefix=True)
    await registry.close()
    assert [x async for x in w] == []
