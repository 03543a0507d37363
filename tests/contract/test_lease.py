"""Leases and the keepalive manager: one contract for every backend (see conftest)."""

from __future__ import annotations

import asyncio
import time

import pytest

from raftreg.client import RegistryClient
from raftreg.common.types import EventType
from raftreg.errors import AlreadyExists, LeaseNotFound
from tests.contract.conftest import MIN_LEASE_TTL, WAIT, eventually, process_only

pytestmark = pytest.mark.slow
# The keepalive manager's lease: renewed every TTL/3, so each renewal has 2/3 of the TTL to be
# acknowledged; 4 s leaves that well above a loaded machine's hiccups.
KEPT_TTL = 4


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


# Process backends only: the remaining TTL must drop in real time; memory's lease clock is
# a ManualClock that only `advance()` moves.
@process_only
async def test_keepalive_once_renews_to_the_full_ttl(registry: RegistryClient) -> None:
    g = await registry.lease_grant(10)
    await asyncio.sleep(2.5)  # the remaining TTL drops: the point of the test
    before = (await registry.lease_time_to_live(g.id)).ttl
    assert before <= 8  # 7.5 s or less left, in whole seconds rounded either way
    t0 = time.monotonic()
    assert await registry.lease_keepalive_once(g.id) == 10
    after = (await registry.lease_time_to_live(g.id)).ttl
    elapsed = time.monotonic() - t0
    # Renewed to the full 10 s: at least 10 - elapsed left, reported in whole seconds (raftreg
    # rounds up, etcd down), so more than 9 - elapsed; not renewed, at most 8.5 - elapsed.
    assert after > 9 - elapsed, (before, after, elapsed)
    await registry.lease_revoke(g.id)


async def test_a_ttl_below_the_minimum_is_raised_to_it(registry: RegistryClient) -> None:
    # raftreg: the `min_lease_ttl` setting (2 s here); etcd: ceil(1.5 x election timeout),
    # 2 s for the default 1000 ms. Same number by configuration, same rule.
    g = await registry.lease_grant(1)
    assert g.ttl == MIN_LEASE_TTL
    await registry.lease_revoke(g.id)


# Process backends only: expiry in real time; memory's leases expire only through `advance()`.
@process_only
async def test_expiry_deletes_the_keys_and_watchers_see_it(
    registry: RegistryClient, prefix: str
) -> None:
    asked = time.monotonic()  # the lease cannot start before it is asked for
    g = await registry.lease_grant(MIN_LEASE_TTL)
    put = await registry.put(prefix + "k", "v", lease=g.id)
    # From after the put: a watch from "now" starts at the serving member's revision, and a
    # member that has not applied the put yet would deliver it.
    w = await registry.watch(prefix + "k", start_revision=put.revision + 1)
    batch = await asyncio.wait_for(w.__anext__(), 2 * MIN_LEASE_TTL + 10)
    gone = time.monotonic() - asked
    (ev,) = batch.events
    assert ev.type == EventType.DELETE
    assert gone >= MIN_LEASE_TTL - 0.05, f"expired early: {gone:.2f}s"
    assert gone <= 2 * MIN_LEASE_TTL + 1, f"expired late: {gone:.2f}s"
    assert (await registry.get(prefix + "k")).count == 0
    assert (await registry.lease_time_to_live(g.id)).ttl == -1
    w.cancel()


# Process backends only: renewals and expiry in real time; memory's keeper and leases run on
# a ManualClock that only `advance()` moves.
@process_only
async def test_the_keepalive_manager_keeps_a_lease_past_its_ttl(
    registry: RegistryClient, prefix: str
) -> None:
    keeper = registry.keepalive_manager()
    assert registry.keepalive_manager() is keeper
    renewed: list[int] = []
    lid = await keeper.grant_and_keep(KEPT_TTL, on_renew=lambda i, ttl: renewed.append(ttl))
    await registry.put(prefix + "k", "v", lease=lid)
    await asyncio.sleep(KEPT_TTL * 2 + 0.5)  # the observation window itself: past two TTLs
    assert (await registry.get(prefix + "k")).count == 1
    assert lid in keeper.kept() and len(renewed) >= 3
    assert set(renewed) == {KEPT_TTL}
    # The lease is known alive until the last acknowledged renewal's send time + the TTL (the
    # server counts it from a later moment): the keys must not go before that.
    alive_until = keeper.alive_until(lid)
    assert alive_until is not None
    keeper.forget(lid)

    async def gone() -> bool:
        return (await registry.get(prefix + "k")).count == 0

    await eventually(gone, "the forgotten lease expires", KEPT_TTL + WAIT)
    early = alive_until - keeper.clock.now()
    assert early <= 0.05, f"the lease expired {early:.2f}s before its acknowledged deadline"


# Process backends only: the loss is learnt at the keeper's next renewal, a timer that on
# memory runs on a ManualClock only `advance()` moves.
@process_only
async def test_the_keepalive_manager_reports_a_revoked_lease_lost(
    registry: RegistryClient,
) -> None:
    keeper = registry.keepalive_manager()
    lost, renewed = asyncio.Event(), asyncio.Event()
    lid = await keeper.grant_and_keep(3, lambda _: lost.set(), on_renew=lambda i, t: renewed.set())
    await asyncio.wait_for(renewed.wait(), WAIT)  # kept: the stream is up and answering
    await registry.lease_revoke(lid)
    await asyncio.wait_for(lost.wait(), WAIT)  # learnt at the next renewal, ~1 s later
    assert lid not in keeper.kept()
