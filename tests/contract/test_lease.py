"""Leases and the keepalive manager: one contract for both backends (see conftest)."""

from __future__ import annotations

import asyncio
import time

import pytest

from raftreg.client import RegistryClient
from raftreg.errors import AlreadyExists, LeaseNotFound
from raftreg.store.commands import EventType
from tests.contract.conftest import MIN_LEASE_TTL

pytestmark = pytest.mark.slow


async def test_grant_attach_inspect_and_revoke(registry: RegistryClient, prefix: str) -> None:
    g = await registry.lease_grant(30)
    assert g.id > 0 and g.ttl == 30 and g.revision > 0
    await registry.put(prefix + "a", "1", lease=g.id)
    await registry.put(prefix + "b", "2", lease=g.id)
    (kv,) = (await registry.get(prefix + "a")).kvs
    assert kv.lease == g.id
    t = await registry.lease_time_to_live(g.id, keys=True)
    assert t.id == g.id and t.granted_ttl == 30 and 0 < t.ttl <= 30
    assert sorted(t.keys) == [(prefix + "a").encode(), (prefix + "b").encode()]
    assert g.id in await registry.lease_list()
    await registry.lease_revoke(g.id)
    assert (await registry.get(prefix, prefix=True)).count == 0
    assert g.id not in await registry.lease_list()


async def test_an_unknown_lease_is_reported_the_same_way_everywhere(
    registry: RegistryClient, prefix: str
) -> None:
    g = await registry.lease_grant(30)
    await registry.lease_revoke(g.id)
    with pytest.raises(LeaseNotFound):
        await registry.lease_revoke(g.id)
    with pytest.raises(LeaseNotFound):
        await registry.put(prefix + "k", "v", lease=g.id)
    assert (await registry.lease_time_to_live(g.id)).ttl == -1
    assert await registry.lease_keepalive_once(g.id) == 0


async def test_a_client_chosen_lease_id_is_used_once(registry: RegistryClient) -> None:
    lid = 0x5EED_0000 + time.time_ns() % 0xFFFF
    g = await registry.lease_grant(30, id=lid)
    assert g.id == lid
    with pytest.raises(AlreadyExists):
        await registry.lease_grant(30, id=lid)
    await registry.lease_revoke(lid)


async def test_keepalive_once_renews_to_the_full_ttl(registry: RegistryClient) -> None:
    g = await registry.lease_grant(10)
    await asyncio.sleep(1.2)
    assert (await registry.lease_time_to_live(g.id)).ttl < 10
    assert await registry.lease_keepalive_once(g.id) == 10
    assert (await registry.lease_time_to_live(g.id)).ttl >= 9
    await registry.lease_revoke(g.id)


async def test_a_ttl_below_the_minimum_is_raised_to_it(registry: RegistryClient) -> None:
    # raftreg: the `min_lease_ttl` setting (2 s here); etcd: ceil(1.5 x election timeout),
    # 2 s for the default 1000 ms. Same number by configuration, same rule.
    g = await registry.lease_grant(1)
    assert g.ttl == MIN_LEASE_TTL
    await registry.lease_revoke(g.id)


async def test_expiry_deletes_the_keys_and_watchers_see_it(
    registry: RegistryClient, prefix: str
) -> None:
    g = await registry.lease_grant(MIN_LEASE_TTL)
    granted = time.monotonic()
    await registry.put(prefix + "k", "v", lease=g.id)
    w = await registry.watch(prefix + "k")
    batch = await asyncio.wait_for(w.__anext__(), MIN_LEASE_TTL + 10)
    gone = time.monotonic() - granted
    (ev,) = batch.events
    assert ev.type == EventType.DELETE
    assert gone >= MIN_LEASE_TTL - 0.05, "expired early"
    assert (await registry.get(prefix + "k")).count == 0
    assert (await registry.lease_time_to_live(g.id)).ttl == -1
    w.cancel()


async def test_the_keepalive_manager_keeps_a_lease_past_its_ttl(
    registry: RegistryClient, prefix: str
) -> None:
    keeper = registry.keepalive_manager()
    assert registry.keepalive_manager() is keeper
    renewed: list[int] = []
    lid = await keeper.grant_and_keep(MIN_LEASE_TTL, on_renew=lambda i, ttl: renewed.append(ttl))
    await registry.put(prefix + "k", "v", lease=lid)
    await asyncio.sleep(MIN_LEASE_TTL * 2 + 0.5)
    assert (await registry.get(prefix + "k")).count == 1
    assert lid in keeper.kept() and len(renewed) >= 3
    assert set(renewed) == {MIN_LEASE_TTL}
    keeper.forget(lid)
    await asyncio.sleep(MIN_LEASE_TTL + 1.5)
    assert (await registry.get(prefix + "k")).count == 0


async def test_the_keepalive_manager_reports_a_revoked_lease_lost(
    registry: RegistryClient,
) -> None:
    keeper = registry.keepalive_manager()
    lost = asyncio.Event()
    lid = await keeper.grant_and_keep(3, lambda _: lost.set())
    await asyncio.sleep(0.2)
    await registry.lease_revoke(lid)
    await asyncio.wait_for(lost.wait(), 5)
    assert lid not in keeper.kept()
