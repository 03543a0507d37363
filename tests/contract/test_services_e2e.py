"""The example services end to end, one contract for both process backends: the same `user` and
`gateway` processes registered in a raftreg cluster or a real etcd, chosen only by the
`--registry` URL they are given."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from raftreg.client import RegistryClient
from raftreg.discovery import Resolver, instance_key
from services.testing import (
    ServiceGroup,
    SteadyTraffic,
    instance_ids,
    log_lines,
    send_user_traffic,
    wait_stats,
)
from tests.contract.conftest import Backend, process_only

# Process backends only: the services are processes given the backend's URL (`--registry`),
# which memory does not have.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), process_only]
_seq = itertools.count(1)
TTL = 2  # the instance that is killed: its lease runs out
LONG_TTL = 30  # the instance that is stopped: gone well within it means deregistered


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def test_register_balance_and_survive_a_killed_instance(
    tmp_path: Path, backend: Backend, registry: RegistryClient, http: aiohttp.ClientSession
) -> None:
    svc = f"user{next(_seq)}{time.time_ns() % 10**6}"
    with ServiceGroup(tmp_path / "svc", backend.url) as g:
        procs = g.start_many([
            ("user", "a", ["--service", svc, "--weight", "1", "--ttl", str(TTL)]),
            ("user", "b", ["--service", svc, "--weight", "2", "--ttl", str(LONG_TTL)]),
            ("user", "c", ["--service", svc, "--weight", "3", "--ttl", str(TTL)]),
            ("gateway", "gw", ["--user-service", svc, "--policy", "weighted_round_robin"]),
        ])
        gw = procs[-1].http_url
        assert (await registry.get(instance_key(svc, "c"))).count == 1
        await wait_stats(http, gw, lambda s: instance_ids(s) == {"a", "b", "c"})

        t = await send_user_traffic(http, gw, 300, concurrency=1)
        assert t.failures == 0 and t.served == {"a": 50, "b": 100, "c": 150}, t

        async with Resolver(registry, svc) as res, SteadyTraffic(http, gw) as traffic:
            await res.wait_for(lambda i: len(i) == 3, 10)
            await traffic.wait_served(50)  # the kill lands while requests are in flight
            killed = time.monotonic()
            g.kill("c")
            traffic.phase("after the kill")
            await res.wait_for(lambda i: {x.id for x in i} == {"a", "b"}, 2 * TTL + 10)
            dropped = time.monotonic() - killed
            await wait_stats(http, gw, lambda s: instance_ids(s) == {"a", "b"}, timeout=10)
            after = await traffic.wait_served(100)
        # c's lease ran out. c renewed every TTL/3, so at the kill about 2/3 of the TTL was
        # left (less any lag of its last renewal): TTL/2 allows for that lag and still catches
        # a removal before the lease ran out (e.g. at the first missed renewal). And no later
        # than twice the TTL plus a second.
        assert TTL / 2 <= dropped <= 2 * TTL + 1.0, f"dropped after {dropped:.2f}s (TTL {TTL}s)"
        t = traffic.total()
        assert t.failures == 0, (t, traffic.errors)  # calls to c were retried elsewhere
        assert set(after.served) == {"a", "b"}, after
        # the kill was seen: some calls went to the dead instance and were retried
        assert log_lines(g, "gw", f"UNAVAILABLE on {svc}/c"), g.log_tail("gw")

        t0 = time.monotonic()
        assert await asyncio.to_thread(g.terminate, "b") == 0
        assert (await registry.get(instance_key(svc, "b"))).count == 0
        # deregistered on SIGTERM, not by expiry: far below b's 30 s TTL, and said so
        assert time.monotonic() - t0 < 15
        assert log_lines(g, "b", f"deregistered {instance_key(svc, 'b')}"), g.log_tail("b")
        # Nothing left behind on the shared cluster: leases of killed processes would expire
        # during later tests, moving the revision under them.
        assert await asyncio.to_thread(g.terminate, "gw") == 0
        assert await asyncio.to_thread(g.terminate, "a") == 0
