"""`ServiceChannels` over real gRPC servers on loopback, instances resolved from the in-memory
registry."""

from __future__ import annotations

import collections
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import grpc.aio
import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.discovery import (
    Instance,
    NoInstance,
    OutlierDetector,
    Resolver,
    ServiceChannels,
    encode_instance,
)

pytestmark = pytest.mark.timeout(30)
WHO = "/test.Echo/Who"


class Server:
    """A gRPC server answering /test.Echo/Who with its name, or failing with `fail`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.fail: grpc.StatusCode | None = None
        self.server = grpc.aio.server()

        async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.calls += 1
            if self.fail is not None:
                await context.abort(self.fail, f"{self.name} is failing")
            return self.name.encode()

        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dead_address() -> Iterator[str]:
    """An address that refuses connections for the whole test: bound, never listening (so no
    server started meanwhile can take the port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[str], Server]]:
    started: list[Server] = []

    def make(name: str) -> Server:
        s = Server(name)
        started.append(s)
        return s

    yield make
    for s in started:
        await s.server.stop(None)


@pytest.fixture
async def mem() -> AsyncIterator[MemoryRegistryClient]:
    c = MemoryRegistryClient(seed=3)
    yield c
    await c.close()


async def register(mem: MemoryRegistryClient, iid: str, address: str, weight: int = 1) -> None:
    await mem.put(f"/services/echo/{iid}", encode_instance(
        Instance("echo", iid, address, weight=weight)))


async def who(ch: grpc.aio.Channel) -> str:
    r: bytes = await ch.unary_unary(WHO)(b"", timeout=2)
    return r.decode()


@contextlib.asynccontextmanager
async def channels(mem: MemoryRegistryClient, **kw: object) -> AsyncIterator[ServiceChannels]:
    async with Resolver(mem, "echo") as res, ServiceChannels(res, **kw) as sc:  # type: ignore[arg-type]
        yield sc


async def test_weighted_spread_over_real_channels_is_exact(
    mem: MemoryRegistryClient, servers: Callable[[str], Server]
) -> None:
    for name, w in (("a", 1), ("b", 2), ("c", 3)):
        s = servers(name)
        await s.server.start()
        await register(mem, name, s.address, w)
    async with channels(mem, policy="weighted_round_robin") as sc:
        got = collections.Counter([await sc.call(who) for _ in range(600)])
        assert got == {"a": 100, "b": 200, "c": 300}
        assert sc.served == got
        sc.set_policy("round_robin")
        got = collections.Counter([await sc.call(who) for _ in range(300)])
        assert got == {"a": 100, "b": 100, "c": 100}


async def test_a_dead_instance_is_retried_elsewhere_and_ejected(
    mem: MemoryRegistryClient, servers: Callable[[str], Server], dead_address: str
) -> None:
    a, b = servers("a"), servers("b")
    for s in (a, b):
        await s.server.start()
        await register(mem, s.name, s.address)
    await register(mem, "dead", dead_address)
    od = OutlierDetector(consecutive_failures=3, base_ejection_s=30)
    async with channels(mem, policy="round_robin", outlier=od) as sc:
        got = collections.Counter([await sc.call(who) for _ in range(60)])
        assert set(got) == {"a", "b"} and sum(got.values()) == 60  # no call failed
        assert od.ejected() == {"dead"}
        assert "dead" not in sc.served


async def test_without_retries_the_failure_surfaces(
    mem: MemoryRegistryClient, dead_address: str
) -> None:
    await register(mem, "dead", dead_address)
    async with channels(mem, policy="round_robin") as sc:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await sc.call(who, attempts=1)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError):
            await sc.call(who)  # every instance tried: the last error


async def test_application_errors_are_not_retried_but_count_against_health(
    mem: MemoryRegistryClient, servers: Callable[[str], Server]
) -> None:
    a, b = servers("a"), servers("b")
    for s in (a, b):
        await s.server.start()
        await register(mem, s.name, s.address)
    a.fail = grpc.StatusCode.INTERNAL
    b.fail = grpc.StatusCode.NOT_FOUND
    od = OutlierDetector(consecutive_failures=2, base_ejection_s=30)
    async with channels(mem, policy="round_robin", outlier=od) as sc:
        codes = []
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await sc.call(who)
            codes.append(e.value.code())
        assert a.calls + b.calls == 6  # never retried
        assert od.ejected() == {"a"}  # INTERNAL is the instance's fault, NOT_FOUND is not
        assert codes[-1] == grpc.StatusCode.NOT_FOUND


async def test_channels_follow_instances_as_they_come_and_go(
    mem: MemoryRegistryClient, servers: Callable[[str], Server]
) -> None:
    a, b = servers("a"), servers("b")
    await a.server.start()
    await b.server.start()
    await register(mem, "a", a.address)
    async with Resolver(mem, "echo") as res, ServiceChannels(res, close_grace=0.1) as sc:
        assert {await sc.call(who) for _ in range(4)} == {"a"}
        await register(mem, "b", b.address)
        await res.wait_for(lambda i: len(i) == 2, 5)
        assert {await sc.call(who) for _ in range(4)} == {"a", "b"}
        await mem.delete("/services/echo/a")
        await res.wait_for(lambda i: len(i) == 1, 5)
        assert {await sc.call(who) for _ in range(4)} == {"b"}
        await mem.delete("/services/echo/b")
        await res.wait_for(lambda i: not i, 5)
        with pytest.raises(NoInstance):
            await sc.call(who)


async def test_consistent_hash_sends_a_key_to_one_instance(
    mem: MemoryRegistryClient, servers: Callable[[str], Server]
) -> None:
    for name in "abc":
        s = servers(name)
        await s.server.start()
        await register(mem, name, s.address)
    async with channels(mem, policy="consistent_hash") as sc:
        for k in range(20):
            key = f"user-{k}".encode()
            assert len({await sc.call(who, key=key) for _ in range(5)}) == 1
