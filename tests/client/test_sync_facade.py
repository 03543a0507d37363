"""The blocking facade's watch iterator, background keepalive, and the sync discovery pieces,
over the in-memory registry (real store, manual lease clock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from raftreg.client import MemoryRegistryClient, SyncRegistryClient, connect_sync
from raftreg.common.types import EventType
from raftreg.discovery import Instance, SyncRegistration, SyncResolver

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sync() -> Iterator[SyncRegistryClient]:
    with SyncRegistryClient.wrap(lambda: MemoryRegistryClient(seed=3)) as c:
        yield c


def memory(c: SyncRegistryClient) -> MemoryRegistryClient:
    assert isinstance(c.client, MemoryRegistryClient)
    return c.client


def test_watch_is_a_blocking_iterator_with_the_async_watchs_guarantees(
    sync: SyncRegistryClient,
) -> None:
    start = sync.put("/w/a", "1").revision
    with sync.watch("/w/", prefix=True, start_revision=start, prev_kv=True) as w:
        sync.put("/w/a", "2")
        sync.delete("/w/a")
        seen = []
        while len(seen) < 3:
            seen += list(w.next(timeout=5).events)
    assert [(e.type, e.kv.value) for e in seen] == [
        (EventType.PUT, b"1"), (EventType.PUT, b"2"), (EventType.DELETE, b"")]
    assert seen[2].prev_kv is not None and seen[2].prev_kv.value == b"2"
    with pytest.raises(StopIteration):  # a cancelled watch ends the iteration
        next(w)


def test_a_watch_that_waits_too_long_says_so_and_carries_on(sync: SyncRegistryClient) -> None:
    w = sync.watch("/quiet/", prefix=True)
    with pytest.raises(TimeoutError):
        w.next(timeout=0.05)
    sync.put("/quiet/k", "v")
    assert [e.kv.key for e in w.next(timeout=5).events] == [b"/quiet/k"]
    w.cancel()


def test_keep_alive_renews_in_the_background_and_reports_a_loss(
    sync: SyncRegistryClient,
) -> None:
    lease = sync.lease_grant(5)
    lost = threading.Event()
    sync.keep_alive(lease.id, lease.ttl, on_lost=lambda _id: lost.set())
    sync.put("/kept", "v", lease=lease.id)
    sync.run(_advance(memory(sync), 12))  # far past the TTL, renewed on the way
    assert sync.get("/kept").count == 1 and not lost.is_set()
    sync.forget(lease.id)
    sync.run(_advance(memory(sync), 12))
    assert sync.get("/kept").count == 0


async def _advance(mem: MemoryRegistryClient, seconds: float) -> None:
    """Move the manual clock in steps, letting the keeper renew between them."""
    import asyncio

    for _ in range(int(seconds * 4)):
        mem.advance(0.25)
        for _ in range(5):
            await asyncio.sleep(0)


def test_sync_registration_and_resolver(sync: SyncRegistryClient) -> None:
    me = Instance("orders", "", "10.0.0.7:81", version="v2")
    with SyncResolver(sync, "orders") as orders:
        assert orders.instances == ()
        with SyncRegistration(sync, me, ttl=10) as reg:
            assert reg.registered and reg.key == "/services/orders/10.0.0.7:81"
            found = orders.wait_for(lambda f: len(f) == 1, 5)
            assert (found[0].address, found[0].version) == ("10.0.0.7:81", "v2")
        orders.wait_for(lambda f: f == (), 5)  # stop() revoked the lease


def test_connect_sync_takes_connects_options() -> None:
    with connect_sync("127.0.0.1:1", timeout=1.0, connect_timeout=0.5) as c:
        assert c.endpoints == ("127.0.0.1:1",)
