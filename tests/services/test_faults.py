"""Faults under steady gateway traffic, with real processes: a kill -9 of a user instance, of
the registry's leader, of the whole registry, and malformed registrations.

Every test gets a three-node raftreg cluster of its own (`own_registry`), so killing nodes
never disturbs another test, and runs `SteadyTraffic` (GET /user through the gateway's HTTP
API, continuously) across the fault: the gateway must not fail a single request.
Blocking process control (READY waits, leader waits) runs in threads so the traffic keeps
flowing while it waits. Gateways run with `GENEROUS_DEADLINE`: "not a single failed request"
must not hinge on every request finishing within the production default of 1 s. Time bounds
are derived from the TTLs and the keepalive cadence, with room for a busy machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from raftreg.client import RegistryClient, connect
from raftreg.common.types import KeyValue
from raftreg.discovery import Instance, Resolver, decode_instance, service_prefix
from raftreg.testing import ProcessCluster
from services.testing import (
    ServiceGroup,
    SteadyTraffic,
    get_json,
    instance_ids,
    log_lines,
    wait_stats,
)
from tests.services.conftest import GENEROUS_DEADLINE

pytestmark = pytest.mark.slow

# A fresh cluster's leader wait (30 s) and READY waits (30 s) plus the test's own waits can
# legitimately exceed the suite's 120 s default on a busy machine.
TIMEOUT = pytest.mark.timeout(240)


def _url(cluster: ProcessCluster) -> str:
    return "raftreg://" + ",".join(cluster.endpoints)


def _ids(instances: tuple[Instance, ...]) -> set[str]:
    return {i.id for i in instances}


async def _listed(client: RegistryClient, service: str) -> dict[str, KeyValue]:
    """The registry's valid instances of `service` (linearizable read), by id."""
    res = await client.get(service_prefix(service), prefix=True)
    return {decode_instance(kv.key, kv.value).id: kv for kv in res.kvs}


def _gateway_args(service: str, user_service: str, *extra: str) -> list[str]:
    return ["--service", service, "--user-service", user_service,
            "--chat-service", f"{user_service}-chat", "--policy", "round_robin",
            *GENEROUS_DEADLINE, *extra]


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path / "registry") as c:
        c.start()
        try:
            c.wait_leader(timeout=30.0)
        except TimeoutError:
            tails = {n: (c.alive(n), c.log_text(n)[-1000:]) for n in c.names}
            raise TimeoutError(f"no leader in a fresh cluster within 30 s: {tails}") from None
        yield c


@pytest.fixture
def own_group(tmp_path: Path, own_registry: ProcessCluster) -> Iterator[ServiceGroup]:
    with ServiceGroup(tmp_path / "services", _url(own_registry)) as g:
        yield g


@pytest.fixture
async def own_client(own_registry: ProcessCluster) -> AsyncIterator[RegistryClient]:
    client = connect(_url(own_registry), timeout=3.0)
    try:
        yield client
    finally:
        await client.close()


def _no_failures(traffic: SteadyTraffic) -> str:
    return f"failures by phase: { {p: dict(t.failed) for p, t in traffic.phases.items()} }, " \
           f"first errors: {traffic.errors[:5]}"


# ---------------------------------------------------------------------- kill -9 an instance


@TIMEOUT
async def test_killed_instance_leaves_every_resolver_within_ttl_and_no_request_fails(
    own_group: ServiceGroup, own_client: RegistryClient, http: aiohttp.ClientSession
) -> None:
    ttl, svc = 4, "user-k9"
    await asyncio.to_thread(own_group.start_many, [
        ("user", f"k{i}", ["--service", svc, "--ttl", str(ttl)]) for i in (1, 2, 3)
    ] + [("gateway", "g-k9", _gateway_args("gateway-k9", svc))])
    gw = own_group.ready["g-k9"].http_url
    everyone = {"k1", "k2", "k3"}
    async with Resolver(own_client, svc) as resolver:
        await resolver.wait_for(lambda i: _ids(i) == everyone, 30)
        await wait_stats(http, gw, lambda s: instance_ids(s) == everyone)
        async with SteadyTraffic(http, gw) as traffic:
            await traffic.wait_served(150)
            traffic.phase("kill")
            killed_at = time.monotonic()
            own_group.kill("k2")

            async def gateway_drop() -> float:
                await wait_stats(http, gw, lambda s: "k2" not in instance_ids(s),
                                 timeout=3 * ttl + 5)
                return time.monotonic() - killed_at

            async def resolver_drop() -> float:
                await resolver.wait_for(lambda i: "k2" not in _ids(i), 3 * ttl + 5)
                return time.monotonic() - killed_at

            in_gateway, in_resolver = await asyncio.gather(gateway_drop(), resolver_drop())
            traffic.phase("after")
            await traffic.wait_served(150)
    total = traffic.total()
    figures = f"kill -> gone from the gateway {in_gateway:.2f} s, from a resolver " \
              f"{in_resolver:.2f} s (TTL {ttl} s)"
    print(figures)
    # Gone by lease expiry: the last renewal reached the registry at most a renew interval
    # (ttl/3 +10% jitter) before the kill, so the lease ran out 0.63-1.0 TTL after it; then an
    # expiry commit and a watch event. Not earlier (that would be a drop on the failed calls,
    # not the lease: ttl/2 leaves room for a late keepalive), and not later than twice that.
    assert min(in_gateway, in_resolver) >= ttl / 2, figures
    assert max(in_gateway, in_resolver) <= 2 * ttl + 1.0, figures
    assert total.failures == 0, _no_failures(traffic)
    assert total.ok >= 300, total
    assert set(traffic.phases["after"].served) == {"k1", "k3"}, traffic.phases["after"]
    # the gateway did send calls to the dead instance: the retries, not luck, saved them
    assert log_lines(own_group, "g-k9", "UNAVAILABLE on user-k9/k2"), figures
    assert (await _listed(own_client, svc)).keys() == {"k1", "k3"}


# ---------------------------------------------------------------------- kill -9 the leader


@TIMEOUT
async def test_registry_leader_killed_under_traffic(
    own_registry: ProcessCluster, own_group: ServiceGroup, own_client: RegistryClient,
    http: aiohttp.ClientSession,
) -> None:
    # The failover (election, keepers reconnecting) must not cost anyone their registration;
    # TTL 6 leaves it room on a busy machine.
    ttl, svc = 6, "user-lk"
    await asyncio.to_thread(own_group.start_many, [
        ("user", f"l{i}", ["--service", svc, "--ttl", str(ttl)]) for i in (1, 2)
    ] + [("gateway", "g-lk", _gateway_args("gateway-lk", svc))])
    gw = own_group.ready["g-lk"].http_url
    before = await _listed(own_client, svc)
    assert before.keys() == {"l1", "l2"}
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"l1", "l2"})

    seen: list[set[str]] = []  # every instance set a resolver here reported, in order
    async with Resolver(own_client, svc) as resolver:
        resolver.subscribe(lambda i: seen.append(_ids(i)))
        async with SteadyTraffic(http, gw) as traffic:
            await traffic.wait_served(100)
            leader = await asyncio.to_thread(own_registry.wait_leader)
            traffic.phase("failover")
            own_registry.kill(leader)
            new_leader = await asyncio.to_thread(own_registry.wait_leader, 30.0)
            assert new_leader != leader
            # the same keys, never deleted in between (same create revision)
            after = await _listed(own_client, svc)
            assert {i: kv.create_revision for i, kv in after.items()} == {
                i: kv.create_revision for i, kv in before.items()
            }
            await traffic.wait_served(100)

            traffic.phase("new-instance")
            await asyncio.to_thread(
                own_group.start_service, "user", "l3", "--service", svc, "--ttl", str(ttl)
            )
            await wait_stats(http, gw, lambda s: instance_ids(s) == {"l1", "l2", "l3"})
            await resolver.wait_for(lambda i: _ids(i) == {"l1", "l2", "l3"}, 30)
            deadline = time.monotonic() + 30
            while traffic.phases["new-instance"].served["l3"] < 20:
                assert time.monotonic() < deadline, traffic.phases["new-instance"]
                await asyncio.sleep(0.05)
        assert all({"l1", "l2"} <= ids for ids in seen), seen  # nobody dropped out

    total = traffic.total()
    assert total.failures == 0, _no_failures(traffic)
    assert total.ok >= 300, total
    # the killed node comes back and catches up; the cluster is whole again
    own_registry.start(leader)
    await asyncio.to_thread(own_registry.wait_converged, 30.0)
    assert (await _listed(own_client, svc)).keys() == {"l1", "l2", "l3"}


# ---------------------------------------------------------------------- the whole registry


_REGISTERED = re.compile(r"registered (\S+) at \S+ \(lease ([0-9a-f]{16})")


def _last_lease(group: ServiceGroup, name: str) -> tuple[int, int]:
    """(number of registrations, lease of the last one) from `name`'s log."""
    found = _REGISTERED.findall(group.log_text(name))
    return len(found), int(found[-1][1], 16) if found else 0


@TIMEOUT
async def test_whole_registry_down_gateway_serves_from_cache_and_services_reregister(
    own_registry: ProcessCluster, own_group: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    ttl, svc, gw_svc = 2, "user-out", "gateway-out"
    users = {"o1", "o2"}
    await asyncio.to_thread(own_group.start_many, [
        ("user", u, ["--service", svc, "--ttl", str(ttl)]) for u in sorted(users)
    ] + [("gateway", "g-out", _gateway_args(gw_svc, svc, "--ttl", str(ttl)))])
    gw = own_group.ready["g-out"].http_url
    await wait_stats(http, gw, lambda s: instance_ids(s) == users)
    procs = [*sorted(users), "g-out"]

    async with SteadyTraffic(http, gw) as traffic:
        await traffic.wait_served(100)
        traffic.phase("outage")
        for n in own_registry.names:
            own_registry.kill(n)
        first = await wait_stats(http, gw, lambda s: (s["stale_for"] or 0) > 1.0)
        # every keeper gives its lease up after a TTL without renewal
        deadline = time.monotonic() + ttl + 10
        for name in procs:
            while not log_lines(own_group, name, "lease of", "lost; registering again"):
                assert time.monotonic() < deadline, own_group.log_tail(name)
                await asyncio.sleep(0.05)
        # keep the registry away a while longer: the gateway keeps serving from its cache
        later = await wait_stats(
            http, gw, lambda s: (s["stale_for"] or 0) > max(ttl + 2.0, first["stale_for"] + 1.0)
        )
        assert instance_ids(later) == users, later
        await traffic.wait_served(traffic.phases["outage"].ok + 50)

        traffic.phase("restart")
        own_registry.start()  # the same data directories
        await asyncio.to_thread(own_registry.wait_leader, 30.0)
        # every process registered again by itself, and the registry holds its key under the
        # lease of that new registration (re-registration retries back off up to 5 s)
        deadline = time.monotonic() + 40
        async with connect(_url(own_registry), timeout=3.0) as fresh:
            while True:
                listed = {**await _listed(fresh, svc), **await _listed(fresh, gw_svc)}
                regs = {n: _last_lease(own_group, n) for n in procs}
                if listed.keys() == set(procs) and all(
                    count >= 2 and listed[n].lease == lease for n, (count, lease) in regs.items()
                ):
                    break
                assert time.monotonic() < deadline, (listed, regs)
                await asyncio.sleep(0.1)
        back = await wait_stats(
            http, gw, lambda s: instance_ids(s) == users and (s["stale_for"] or 99) < 2.0,
            timeout=30,
        )
        traffic.phase("after")
        await traffic.wait_served(150)

    phases = traffic.phases
    outage = phases["outage"]
    assert outage.failures == 0 and outage.ok >= 100, _no_failures(traffic)
    assert outage.seconds > ttl, outage
    assert traffic.total().failures == 0, _no_failures(traffic)
    assert set(phases["after"].served) == users, phases["after"]
    assert back["stale_for"] < later["stale_for"]


# ---------------------------------------------------------------------- bad registrations


@TIMEOUT
async def test_malformed_registrations_are_skipped_with_a_warning(
    own_group: ServiceGroup, own_client: RegistryClient, http: aiohttp.ClientSession
) -> None:
    svc = "user-bad"
    base = service_prefix(svc)

    def doc(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    good_address = "127.0.0.1:1"
    # one before the gateway starts (its first list), the rest while it serves (its watch)
    early = {base + "early-not-json": b"{not json"}
    late = {
        base + "not-json": b'{"address": "127.0.0.1:1"',
        base + "not-an-object": b'["127.0.0.1:1"]',
        base + "no-address": doc(weight=1, metadata={}),
        base + "address-not-host-port": doc(address="nohost"),
        base + "address-a-number": doc(address=8080),
        base + "weight-a-string": doc(address=good_address, weight="3"),
        base + "weight-zero": doc(address=good_address, weight=0),
        base + "metadata-not-strings": doc(address=good_address, metadata={"http": 80}),
        base + "registered-at-a-string": doc(address=good_address, registered_at="now"),
        base + "b1/too-deep": doc(address=good_address),
        base + "bad id": doc(address=good_address),
    }
    for k, v in early.items():
        await own_client.put(k, v)
    await asyncio.to_thread(own_group.start_many, [
        ("user", f"b{i}", ["--service", svc, "--ttl", "10"]) for i in (1, 2)
    ] + [("gateway", "g-bad", _gateway_args("gateway-bad", svc))])
    gw = own_group.ready["g-bad"].http_url
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"b1", "b2"})

    async with SteadyTraffic(http, gw) as traffic:
        await traffic.wait_served(100)
        traffic.phase("bad-writes")
        revision = 0
        for k, v in late.items():
            revision = (await own_client.put(k, v)).revision
            # spread the writes over the traffic (usually one watch batch each; nothing below
            # depends on how they are batched)
            await asyncio.sleep(0.02)
        stats = await wait_stats(http, gw, lambda s: s["revision"] >= revision)
        await traffic.wait_served(150)

    assert instance_ids(stats) == {"b1", "b2"}, stats["instances"]
    total = traffic.total()
    assert total.failures == 0, _no_failures(traffic)
    assert set(traffic.phases["bad-writes"].served) == {"b1", "b2"}, traffic.phases
    status, healthz = await get_json(http, f"{gw}/healthz")
    assert (status, healthz) == (200, {"user_instances": 2})
    missing = [k for k in {**early, **late}
               if not log_lines(own_group, "g-bad", "WARNING", "skipping registration", k)]
    assert not missing, f"no warning naming {missing}:\n{own_group.log_tail('g-bad', 40)}"
