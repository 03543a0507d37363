"""Registration and resolution over the in-memory registry (real store, manual lease clock)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.common.types import PutResult
from raftreg.discovery import Instance, Registration, Resolver
from raftreg.errors import FailedPrecondition

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def mem() -> AsyncIterator[MemoryRegistryClient]:
    c = MemoryRegistryClient(seed=1)
    yield c
    await c.close()


def user(i: str, port: int = 9000, weight: int = 1) -> Instance:
    return Instance("user", i, f"127.0.0.1:{port}", weight=weight)


async def until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_registration_writes_the_instance_under_a_kept_lease_and_stop_removes_it(
    mem: MemoryRegistryClient,
) -> None:
    reg = Registration(mem, user("u1"), ttl=10)
    await reg.start()
    r = await mem.get("/services/user/u1")
    assert len(r.kvs) == 1 and r.kvs[0].lease == reg.lease_id != 0
    assert reg.lease_id in mem.keepalive_manager().kept()
    keeper = mem.keepalive_manager()
    for _ in range(25):  # kept alive across several TTLs: renewed about every ttl/3
        mem.advance(1)
        await until(lambda: (keeper.alive_until(reg.lease_id) or 0) - mem.clock.now() > 5)
    assert (await mem.get("/services/user/u1")).kvs
    lease = reg.lease_id
    await reg.stop()
    assert not (await mem.get("/services/user/u1")).kvs
    assert lease not in await mem.lease_list()


async def test_a_lost_lease_is_replaced_by_a_new_registration(
    mem: MemoryRegistryClient,
) -> None:
    async with Registration(mem, user("u1"), ttl=5, retry_base=0.01, retry_max=0.05) as reg:
        first = reg.lease_id
        await mem.lease_revoke(first)  # e.g. expired during a long pause
        assert not (await mem.get("/services/user/u1")).kvs
        # the keeper learns of the loss at its next renewal
        mem.advance(2)
        await until(lambda: reg.registered and reg.lease_id not in (0, first))
        r = await mem.get("/services/user/u1")
        assert r.kvs and r.kvs[0].lease == reg.lease_id
        assert reg.registrations == 2


async def test_registration_outlives_a_registry_outage(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "raftreg.discovery")

    def refused() -> int:
        return sum("registering /services/user/u1 failed" in r.getMessage()
                   for r in caplog.records)

    async with Registration(mem, user("u1"), ttl=5, retry_base=0.01, retry_max=0.05) as reg:
        mem.set_unavailable()
        mem.advance(6)  # no renewal for longer than the TTL: the lease is lost, the key gone
        await until(lambda: not reg.registered)
        assert reg.lease_id == 0
        await until(lambda: refused() >= 3)  # retries are made, and fail, while it is away
        assert not reg.registered and reg.registrations == 1
        mem.set_unavailable(False)
        await reg.wait_registered(5)
        assert (await mem.get("/services/user/u1")).kvs


async def test_start_without_registry_times_out_clearly(mem: MemoryRegistryClient) -> None:
    mem.set_unavailable()
    reg = Registration(mem, user("u1"), retry_base=0.01, retry_max=0.02)
    with pytest.raises(Exception, match="not registered within"):
        await reg.start(timeout=0.2)
    await reg.stop()


async def test_resolver_lists_then_follows_every_change(mem: MemoryRegistryClient) -> None:
    seen: list[tuple[str, ...]] = []
    await mem.put("/services/user/u1", b'{"address":"127.0.0.1:1","weight":2}')
    async with Resolver(mem, "user") as res:
        res.subscribe(lambda insts: seen.append(tuple(i.id for i in insts)))
        assert [(i.id, i.weight) for i in res.instances] == [("u1", 2)]
        await mem.put("/services/user/u2", b'{"address":"127.0.0.1:2"}')
        await mem.put("/services/user-other/x", b'{"address":"127.0.0.1:3"}')  # other service
        await res.wait_for(lambda i: len(i) == 2, 5)
        await mem.delete("/services/user/u1")
        await res.wait_for(lambda i: [x.id for x in i] == ["u2"], 5)
        await mem.put("/services/user/u2", b'{"address":"127.0.0.1:22"}')
        await res.wait_for(lambda i: i[0].address == "127.0.0.1:22", 5)
    assert seen == [("u1", "u2"), ("u2",), ("u2",)]


async def test_resolver_skips_malformed_registrations_with_a_log_line(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "raftreg.discovery")
    await mem.put("/services/user/bad1", b"{not json")
    await mem.put("/services/user/u1", b'{"address":"127.0.0.1:1"}')
    async with Resolver(mem, "user") as res:
        assert [i.id for i in res.instances] == ["u1"]
        await mem.put("/services/user/bad2", b'{"weight":3}')
        await mem.put("/services/user/u1/deeper", b'{"address":"127.0.0.1:1"}')
        await mem.put("/services/user/u2", b'{"address":"127.0.0.1:2"}')
        await res.wait_for(lambda i: [x.id for x in i] == ["u1", "u2"], 5)
        # an instance overwritten with garbage stops being an instance
        await mem.put("/services/user/u1", b'{"address":""}')
        await res.wait_for(lambda i: [x.id for x in i] == ["u2"], 5)
    text = caplog.text
    assert "bad1" in text and "not JSON" in text
    assert "bad2" in text and "address is missing" in text
    assert "deeper" in text


async def test_resolver_keeps_serving_its_cache_while_the_registry_is_away(
    mem: MemoryRegistryClient,
) -> None:
    await mem.put("/services/user/u1", b'{"address":"127.0.0.1:1"}')
    async with Resolver(mem, "user", progress_interval=0.05) as res:
        await until(lambda: res.stale_for() < 0.2)
        mem.set_unavailable()
        await until(lambda: res.stale_for() > 0.3)
        assert [i.id for i in res.instances] == ["u1"]  # never emptied by a hiccup
        mem.set_unavailable(False)
        await until(lambda: res.stale_for() < 0.2)


async def test_resolver_relists_after_compaction(mem: MemoryRegistryClient) -> None:
    await mem.put("/services/user/u1", b'{"address":"127.0.0.1:1"}')
    await mem.put("/services/user/u2", b'{"address":"127.0.0.1:2"}')
    async with Resolver(mem, "user") as res:
        await res.wait_for(lambda i: len(i) == 2, 5)
        # The watch falls behind (detached from the store's event feed, as a watch stream cut
        # off from the server), misses a delete, and its resume point is compacted away: the
        # backend then reports compaction, and only a fresh list can bring the cache back.
        (w,) = mem._watches.values()
        mem._watches = {k: v for k, v in mem._watches.items() if v is not w}
        await mem.delete("/services/user/u1")
        rev = (await mem.put("/x", b"1")).revision
        await mem.compact(rev)
        assert [i.id for i in res.instances] == ["u1", "u2"]
        w._on_compacted(rev, rev)
        await res.wait_for(lambda i: [x.id for x in i] == ["u2"], 5)
        assert mem.watch_count == 1 and w not in mem._watches.values()  # a new watch


async def test_resolver_reads_the_documents_layouts_and_no_other_service(
    mem: MemoryRegistryClient,
) -> None:
    # The reference document's two ways to register (chapter 3.2 and 4.3), byte for byte.
    await mem.put("/services/user-service/10.0.0.1:8080",
                  b'{"name":"user-service","addr":"10.0.0.1:8080","version":"v1"}')
    await mem.put("/services/user", b"192.168.1.10:50051")
    async with Resolver(mem, "user") as res, Resolver(mem, "user-service") as doc:
        assert [(i.id, i.address) for i in res.instances] == [
            ("192.168.1.10:50051", "192.168.1.10:50051")]
        assert [(i.id, i.address, i.version) for i in doc.instances] == [
            ("10.0.0.1:8080", "10.0.0.1:8080", "v1")]
        # ours, under the same range prefix as the bare key, and another service's beside it
        await mem.put("/services/userx/10.0.0.9:1", b"10.0.0.9:1")
        await Registration(mem, Instance("user", "", "10.0.0.2:80")).start()
        await res.wait_for(lambda i: len(i) == 2, 5)
        assert sorted(i.address for i in res.instances) == ["10.0.0.2:80", "192.168.1.10:50051"]
        await mem.delete("/services/user")
        await res.wait_for(lambda i: [x.address for x in i] == ["10.0.0.2:80"], 5)
        assert [i.address for i in doc.instances] == ["10.0.0.1:8080"]


async def test_a_refused_registration_is_retried_with_a_new_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only `ClientClosed` ends a registration: a server's FailedPrecondition (e.g. "request id
    too old" when one client has more writes in flight than the server remembers) is retried
    with a new lease, like any other refusal."""

    class Refusing(MemoryRegistryClient):
        refusals = 2

        async def put(self, key: str | bytes, value: str | bytes, **kw: object) -> PutResult:
            if self.refusals:
                self.refusals -= 1
                raise FailedPrecondition("request id too old")
            return await super().put(key, value, **kw)  # type: ignore[arg-type]

    caplog.set_level(logging.WARNING, "raftreg.discovery")
    mem = Refusing(seed=1)
    try:
        async with Registration(mem, user("u1"), ttl=5, retry_base=0.01, retry_max=0.05) as reg:
            assert mem.refusals == 0 and reg.registered
            assert (await mem.get("/services/user/u1")).kvs[0].lease == reg.lease_id
            assert len(await mem.lease_list()) == 1, "the refused attempts' leases were revoked"
    finally:
        await mem.close()
    retried = [r for r in caplog.records if "request id too old); retrying" in r.getMessage()]
    assert len(retried) == 2
