"""LeaseKeeper against the in-memory client on a manual clock, over the unary fallback, and
against real grpc.aio fake servers (stream failure -> reconnect to another endpoint).

Timers run on a `ManualClock`: a test moves time with `advance()` and then lets the loop run
until the keeper is idle (`settle`, which only yields; it never waits on wall-clock time)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from raftreg.client import GrpcRegistryClient, LeaseKeeper, MemoryRegistryClient
from raftreg.client.keepalive import KeepAliveSource
from raftreg.common.clock import ManualClock
from raftreg.common.types import LeaseGrantResult
from raftreg.errors import InvalidArgument
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg

pytestmark = pytest.mark.timeout(20)


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (pure yields, no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Await `cond()` becoming true (polled on loop iterations), failing after `timeout`."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


class Recorder:
    def __init__(self, m: MemoryRegistryClient) -> None:
        self.m = m
        self.renewed: list[tuple[float, int, int]] = []
        self.lost: list[int] = []

    def on_renew(self, lease_id: int, ttl: int) -> None:
        self.renewed.append((self.m.clock.now(), lease_id, ttl))

    def on_lost(self, lease_id: int) -> None:
        self.lost.append(lease_id)


async def step(m: MemoryRegistryClient, total: float, dt: float = 0.25) -> None:
    """Advance the manual clock by `total` in `dt` steps, letting the keeper run after each."""
    n = round(total / dt)
    for _ in range(n):
        m.advance(dt)
        await settle()


async def test_renews_at_a_third_of_the_ttl_with_jitter() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = LeaseKeeper(m, clock=m.clock, rng=random.Random(3))
        lease = await m.lease_grant(30)
        keeper.keep(lease.id, 30, rec.on_lost, on_renew=rec.on_renew)
        await settle()
        assert [t for t, _, _ in rec.renewed] == [0.0]  # renewed at once
        await step(m, 60)
        times = [t for t, _, _ in rec.renewed]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 5
        assert all(9.0 - 0.25 <= g <= 11.0 + 0.25 for g in gaps), gaps
        assert len({round(g, 2) for g in gaps}) > 1  # jittered, not a fixed period
        assert rec.lost == []
        assert (await m.lease_time_to_live(lease.id)).ttl > 18
        await keeper.close()


async def test_ttl_zero_reports_the_lease_lost_once() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = m.keepalive_manager()
        lease = await m.lease_grant(9)
        keeper.keep(lease.id, 9, rec.on_lost, on_renew=rec.on_renew)
        await settle()
        await m.lease_revoke(lease.id)
        await step(m, 6)
        assert rec.lost == [lease.id]
        assert lease.id not in keeper.kept()
        await step(m, 20)
        assert rec.lost == [lease.id]


async def test_lost_when_no_renewal_is_acknowledged_within_the_ttl() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = m.keepalive_manager()
        lease = await m.lease_grant(6)
        keeper.keep(lease.id, 6, rec.on_lost, on_renew=rec.on_renew)
        await step(m, 3)  # renewed at 0 and at ~2 (+-10%)
        last_ack = rec.renewed[-1][0]
        until = keeper.alive_until(lease.id)
        assert until is not None and until == pytest.approx(last_ack + 6)
        m.set_unavailable(True)  # breaks the stream; reconnects fail from now on
        await step(m, until - m.clock.now() - 0.25)
        assert rec.lost == []
        await step(m, 0.5)
        assert rec.lost == [lease.id]
        assert keeper.kept() == frozenset()
        m.set_unavailable(False)
        await step(m, 10)
        assert rec.lost == [lease.id]


async def test_a_broken_stream_is_reopened_and_everything_renewed_at_once() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = m.keepalive_manager()
        a = await m.lease_grant(30)
        b = await m.lease_grant(60)
        keeper.keep(a.id, 30, rec.on_lost, on_renew=rec.on_renew)
        keeper.keep(b.id, 60, rec.on_lost, on_renew=rec.on_renew)
        await eventually(lambda: len(rec.renewed) == 2)
        assert keeper.streams_opened == 1
        m.advance(1)
        m.break_keepalive_streams()
        # No clock movement needed: the reconnect renews both at once.
        await eventually(lambda: len(rec.renewed) == 4)
        assert keeper.streams_opened == 2
        assert {(t, i) for t, i, _ in rec.renewed[2:]} == {(1.0, a.id), (1.0, b.id)}
        assert rec.lost == []


async def test_forget_grant_and_keep_and_close() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = m.keepalive_manager()
        assert m.keepalive_manager() is keeper  # one per client
        lid = await keeper.grant_and_keep(5, rec.on_lost, on_renew=rec.on_renew)
        assert keeper.kept() == {lid}
        await settle()
        assert len(rec.renewed) == 1
        keeper.forget(lid)
        await step(m, 10)
        assert len(rec.renewed) == 1 and rec.lost == []  # forgotten: no renewals, no callback
        with pytest.raises(InvalidArgument):
            keeper.keep(0, 5)
        await keeper.close()
        await keeper.close()


async def test_a_keeper_whose_client_is_closed_stops_and_its_leases_run_out() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        keeper = LeaseKeeper(m, clock=m.clock)  # not the client's own: outlives its close
        lid = await keeper.grant_and_keep(6, rec.on_lost, on_renew=rec.on_renew)
        await settle()
        assert len(rec.renewed) == 1
        connection = keeper._tasks[0]
    m.break_keepalive_streams()
    await eventually(connection.done)  # no reconnect loop against a closed client
    assert connection.exception() is None
    await step(m, 6.5)
    assert rec.lost == [lid]
    await keeper.close()


class UnaryOnly:
    """A RegistryClient-like object without `open_keepalive_stream`."""

    def __init__(self, m: MemoryRegistryClient) -> None:
        self.m = m
        self.calls = 0

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.m.endpoints

    async def lease_keepalive_once(self, id: int) -> int:
        self.calls += 1
        return await self.m.lease_keepalive_once(id)

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        return await self.m.lease_grant(ttl, id=id)


async def test_unary_fallback_for_clients_without_a_stream() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        rec = Recorder(m)
        u = UnaryOnly(m)
        assert not isinstance(u, KeepAliveSource)
        keeper = LeaseKeeper(u, clock=m.clock)  # type: ignore[arg-type]
        lid = await keeper.grant_and_keep(3, rec.on_lost, on_renew=rec.on_renew)
        await step(m, 6)
        assert u.calls >= 5 and rec.lost == []
        await m.lease_revoke(lid)
        await step(m, 2)
        assert rec.lost == [lid]
        await keeper.close()


# --- gRPC: one stream for all leases; reconnect to another endpoint -------------------------


class FakeLeaseServer(pbg.LeaseServicer):
    """Answers every keepalive with `ttl`; aborts the stream (UNAVAILABLE) after
    `drop_after` answers when set. `batches=False` plays etcd (or raftreg before many-lease
    keepalives): it reads `ID` only and never announces `batches`."""

    def __init__(self, ttl: int = 1, drop_after: int | None = None, *,
                 batches: bool = False) -> None:
        self.ttl = ttl
        self.drop_after = drop_after
        self.batches = batches
        self.streams = 0
        self.requests: list[int] = []
        self.messages: list[list[int]] = []  # the lease ids of each request, as read

    async def LeaseKeepAlive(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        self.streams += 1
        answered = 0
        async for req in request_iterator:
            if self.drop_after is not None and answered >= self.drop_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted drop")
            answered += 1
            if self.batches and req.IDs:
                ids = list(req.IDs)
                self.messages.append(ids)
                self.requests.extend(ids)
                yield pb.LeaseKeepAliveResponse(IDs=ids, TTLs=[self.ttl] * len(ids),
                                                batches=True)
                continue
            self.messages.append([req.ID])
            self.requests.append(req.ID)
            yield pb.LeaseKeepAliveResponse(ID=req.ID, TTL=self.ttl, batches=self.batches)

    async def _unimplemented(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake: keepalive only")

    LeaseGrant = LeaseRevoke = LeaseTimeToLive = LeaseLeases = _unimplemented


@contextlib.asynccontextmanager
async def serving(*fakes: FakeLeaseServer) -> AsyncIterator[list[str]]:
    servers: list[grpc.aio.Server] = []
    endpoints: list[str] = []
    try:
        for fake in fakes:
            server = grpc.aio.server()
            pbg.add_LeaseServicer_to_server(fake, server)
            port = server.add_insecure_port("127.0.0.1:0")
            servers.append(server)
            await server.start()
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for s in servers:
            await s.stop(None)


# The fake servers answer TTL; the keeper's timers run on a ManualClock, so renewals go out
# when the test moves time, and no lease can run out while a failover takes however long it
# takes on this machine. RENEW moves past the renewal interval (TTL/3, jittered by +-10%).
TTL = 3
RENEW = TTL / 3 * 1.1 + 0.01


async def test_grpc_keeper_uses_one_stream_and_fails_over() -> None:
    a = FakeLeaseServer(ttl=TTL, drop_after=4)
    b = FakeLeaseServer(ttl=TTL)
    clock = ManualClock()
    async with serving(a, b) as eps:
        client = GrpcRegistryClient(eps, timeout=2.0, backoff_base=0.01)
        keeper = LeaseKeeper(client, clock=clock, backoff_base=0.01)
        lost: list[int] = []
        renewed: list[int] = []
        for lid in (11, 12):
            keeper.keep(lid, TTL, lost.append, on_renew=lambda i, _t: renewed.append(i))
        # Both renewed at once on one stream to the first endpoint.
        await eventually(lambda: sorted(renewed) == [11, 12])
        assert a.streams == 1 and keeper.endpoint == eps[0]
        clock.advance(RENEW)  # the second round: `a` answers it, its last two answers
        await eventually(lambda: len(renewed) == 4)
        # The third round exhausts `a`; the keeper reopens on `b` and renews both at once.
        clock.advance(RENEW)
        await eventually(lambda: b.streams == 1 and len(renewed) == 6)
        assert keeper.endpoint == eps[1] and sorted(b.requests) == [11, 12]
        clock.advance(RENEW)
        await eventually(lambda: renewed.count(11) >= 4 and renewed.count(12) >= 4)
        assert lost == []
        assert b.streams == 1  # still one stream for both leases
        await keeper.close()
        assert keeper.kept() == frozenset()
        # The client's own keeper (same machinery, loop clock) is closed with the client.
        own = client.keepalive_manager()
        own.keep(13, TTL)
        await eventually(lambda: 13 in b.requests)
        await client.close()
        assert own.kept() == frozenset()
    # Neither server announced `batches`: every renewal went as etcd's request, one lease each.
    assert all(m != [0] for m in a.messages + b.messages)


async def test_grpc_keeper_renews_many_leases_per_message_where_the_server_takes_them() -> None:
    srv = FakeLeaseServer(ttl=TTL, batches=True)
    clock = ManualClock()
    ids = list(range(21, 26))
    async with serving(srv) as eps:
        client = GrpcRegistryClient(eps, timeout=2.0, backoff_base=0.01)
        keeper = LeaseKeeper(client, clock=clock, backoff_base=0.01)
        renewed: list[int] = []
        for lid in ids:
            keeper.keep(lid, TTL, on_renew=lambda i, _t: renewed.append(i))
        await eventually(lambda: sorted(renewed) == ids)
        # The first request is etcd's (one lease); its answer announced `batches`, so the
        # leases held meanwhile went in one request.
        assert srv.messages == [ids[:1], ids[1:]]
        clock.advance(RENEW)
        await eventually(lambda: len(renewed) == 2 * len(ids))
        assert srv.messages[2:] == [ids]  # all due together: one request
        assert srv.streams == 1
        await keeper.close()
        await client.close()


class SendLog:
    """Wraps a memory client's keepalive streams, recording each `send`'s lease ids."""

    def __init__(self, m: MemoryRegistryClient) -> None:
        self.sends: list[tuple[float, list[int]]] = []
        opener = m.open_keepalive_stream

        async def open_stream() -> Any:
            st = await opener()
            send = st.send

            def logged(lease_ids: Any) -> None:
                self.sends.append((m.clock.now(), list(lease_ids)))
                send(lease_ids)

            st.send = logged  # type: ignore[method-assign]
            return st

        m.open_keepalive_stream = open_stream  # type: ignore[method-assign]


async def test_renewals_due_close_together_go_in_one_send() -> None:
    async with MemoryRegistryClient(seed=1) as m:
        log = SendLog(m)
        keeper = LeaseKeeper(m, clock=m.clock, jitter=0.0, coalesce=0.1)
        a, b, c = [(await m.lease_grant(30)).id for _ in range(3)]
        keeper.keep(a, 30)
        await settle()
        m.advance(0.5)
        keeper.keep(b, 30)  # due 0.5 s after `a` each round: within 10% of 10 s
        await settle()
        m.advance(2.0)
        keeper.keep(c, 30)  # due 2.5 s after `a`: not within 10%
        await settle()
        assert log.sends == [(0.0, [a]), (0.5, [b]), (2.5, [c])]
        m.advance(7.5)  # t = 10: `a` is due, `b` joins it early, `c` waits
        await settle()
        assert log.sends[3:] == [(10.0, [a, b])]
        m.advance(2.5)
        await settle()
        assert log.sends[4:] == [(12.5, [c])]
        await keeper.close()


async def test_grpc_keeper_reports_loss_once_no_endpoint_answers() -> None:
    a = FakeLeaseServer(ttl=TTL)
    clock = ManualClock()
    lost = asyncio.Event()
    acked: list[float] = []
    async with serving(a) as eps:
        client = GrpcRegistryClient(eps, timeout=1.0, connect_timeout=0.2, backoff_base=0.01)
        keeper = LeaseKeeper(client, clock=clock, backoff_base=0.01)
        keeper.keep(7, TTL, lambda _i: lost.set(),
                    on_renew=lambda _i, _t: acked.append(clock.now()))
        await eventually(lambda: len(acked) == 1)
        clock.advance(RENEW)
        await eventually(lambda: len(acked) == 2)
        # Sent and acknowledged at the same clock time: alive until then + the TTL.
        until = keeper.alive_until(7)
        assert until == pytest.approx(acked[-1] + TTL)
    # The only server is gone: no renewal can be acknowledged any more.
    await eventually(lambda: keeper.endpoint is None)
    clock.advance(until - clock.now() - 0.01)
    await settle()
    assert not lost.is_set() and 7 in keeper.kept()  # not before the TTL has run out ...
    clock.advance(0.02)
    await eventually(lost.is_set)  # ... and as soon as it has
    assert keeper.alive_until(7) is None and 7 not in keeper.kept()
    await keeper.close()
    await client.close()
