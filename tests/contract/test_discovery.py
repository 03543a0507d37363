"""Service registration, discovery and balanced calls: one contract for every backend.

Every test uses its own service name, so tests share each backend's cluster safely.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from raftreg.client import RegistryClient, connect
from raftreg.discovery import Instance, Registration, Resolver, ServiceChannels, encode_instance
from tests.contract.conftest import MIN_LEASE_TTL, WAIT, Backend, process_only

pytestmark = pytest.mark.slow
_seq = itertools.count(1)


@pytest.fixture
def service(backend: Backend) -> str:
    return f"svc{next(_seq)}-{time.time_ns() % 10**9}"


@pytest.fixture
async def other(backend: Backend, registry: RegistryClient) -> AsyncIterator[RegistryClient]:
    """A second client: another process's view of the registry. On memory `registry` itself:
    a second `MemoryRegistryClient` would not see the first one's writes in its watches (see
    conftest)."""
    if backend.name == "memory":
        yield registry
        return
    c = connect(backend.url, timeout=3.0)
    try:
        yield c
    finally:
        await c.close()


def inst(service: str, iid: str, port: int, weight: int = 1) -> Instance:
    return Instance(service, iid, f"127.0.0.1:{port}", weight=weight, zone="z1", version="1.0")


async def test_a_registered_instance_is_discovered_and_gone_at_once_on_stop(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    async with Resolver(other, service) as res:
        assert res.instances == ()
        # A long TTL: gone well within it means deregistered, not expired.
        reg = Registration(registry, inst(service, "i1", 5001, weight=3), ttl=30)
        await reg.start()
        (found,) = await res.wait_for(lambda i: len(i) == 1, WAIT)
        assert (found.id, found.address, found.weight, found.zone) == (
            "i1", "127.0.0.1:5001", 3, "z1")
        assert found.registered_at > 0
        t0 = time.monotonic()
        await reg.stop()
        await res.wait_for(lambda i: not i, WAIT)
        assert time.monotonic() - t0 < WAIT  # deregistered at once, not at lease expiry (30 s)


# Process backends only: renewals across TTLs of real time; on memory no lease time passes
# (a ManualClock only `advance()` moves), so it would pass without renewing anything.
@process_only
async def test_registration_stays_across_many_ttls(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    # Renewed every TTL/3: each renewal has 2/3 of the TTL to be acknowledged.
    ttl = 2 * MIN_LEASE_TTL
    async with (
        Registration(registry, inst(service, "i1", 5001), ttl=ttl) as reg,
        Resolver(other, service) as res,
    ):
        changes: list[int] = []
        res.subscribe(lambda i: changes.append(len(i)))
        await asyncio.sleep(3 * ttl)  # the observation window itself
        assert len(res.instances) == 1 and changes == []
        assert reg.registrations == 1


# Process backends only: expiry in real time; memory's leases expire only through `advance()`.
@process_only
async def test_an_instance_that_stops_renewing_is_dropped_after_its_ttl_never_before(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    """A dead instance (its lease no longer renewed, as after kill -9) leaves every resolver
    once its TTL has run out (within twice the TTL plus a second), and never before."""
    async with Resolver(other, service) as res:
        asked = time.monotonic()  # the lease cannot start before it is asked for
        g = await registry.lease_grant(MIN_LEASE_TTL)
        await registry.put(f"/services/{service}/dead",
                           encode_instance(inst(service, "dead", 5002)), lease=g.id)
        await res.wait_for(lambda i: len(i) == 1, WAIT)
        await res.wait_for(lambda i: not i, 2 * MIN_LEASE_TTL + WAIT)
        gone = time.monotonic() - asked
        assert MIN_LEASE_TTL - 0.05 <= gone <= 2 * MIN_LEASE_TTL + 1.0, gone


# Process backends only: the registration learns the loss at its keeper's next renewal, a
# timer that on memory runs on a ManualClock only `advance()` moves.
@process_only
async def test_a_revoked_lease_is_replaced_by_a_new_registration(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    async with Registration(registry, inst(service, "i1", 5001), ttl=MIN_LEASE_TTL + 1,
                            retry_base=0.05) as reg, Resolver(other, service) as res:
        first = reg.lease_id
        await other.lease_revoke(first)  # e.g. expired while the process was paused
        await res.wait_for(lambda i: not i, WAIT)
        await res.wait_for(lambda i: len(i) == 1, MIN_LEASE_TTL + 1 + WAIT)
        await reg.wait_registered(WAIT)
        assert reg.lease_id not in (0, first) and reg.registrations == 2


async def test_malformed_registrations_never_break_a_resolver(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    await registry.put(f"/services/{service}/bad", b"{not json")
    async with Resolver(other, service) as res:
        await registry.put(f"/services/{service}/noaddr", b'{"weight": 2}')
        await registry.put(f"/services/{service}/ok", encode_instance(inst(service, "ok", 5003)))
        await res.wait_for(lambda i: [x.id for x in i] == ["ok"], WAIT)
    await registry.delete(f"/services/{service}/", prefix=True)


class Who:
    """A real gRPC server that answers /t.Who/Name with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.aio.server()

        async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return name.encode()

        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Who", {"Name": grpc.unary_unary_rpc_method_handler(who)}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")


async def test_calls_spread_by_weight_across_registered_instances(
    registry: RegistryClient, other: RegistryClient, service: str
) -> None:
    servers = [Who(n) for n in ("a", "b", "c")]
    regs = [Registration(registry, inst(service, s.name, s.port, weight=w), ttl=10)
            for s, w in zip(servers, (1, 2, 3), strict=True)]
    try:
        for s, r in zip(servers, regs, strict=True):
            await s.server.start()
            await r.start()
        async with Resolver(other, service) as res, ServiceChannels(
            res, policy="weighted_round_robin"
        ) as sc:
            await res.wait_for(lambda i: len(i) == 3, WAIT)

            async def call(ch: grpc.aio.Channel) -> str:
                b: bytes = await ch.unary_unary("/t.Who/Name")(b"", timeout=2)
                return b.decode()

            got = collections.Counter([await sc.call(call) for _ in range(300)])
            assert got == {"a": 50, "b": 100, "c": 150}
            await regs[2].stop()
            await res.wait_for(lambda i: len(i) == 2, WAIT)
            got = collections.Counter([await sc.call(call) for _ in range(90)])
            assert got == {"a": 30, "b": 60}
    finally:
        for r in regs:
            await r.stop()
        for s in servers:
            await s.server.stop(None)
