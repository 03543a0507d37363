"""GrpcRegistryClient watches against scripted fake Watch servers on 127.0.0.1:0.

Each test drives the server side by hand: it takes the next stream the client opened, reads the
client's requests and answers (or drops the stream) explicitly, so the resume logic is checked
exactly: the re-create carries start_revision = last delivered + 1, and the caller sees no gap
and no duplicate. Every wait is bounded; every server is stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest

from raftreg.client import GrpcRegistryClient, Watch, WatchBatch
from raftreg.errors import InvalidArgument, Unavailable
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0


class FakeStream:
    """The server end of one Watch call, driven by the test."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        self.out: asyncio.Queue[pb.WatchResponse | grpc.StatusCode] = asyncio.Queue()
        self.ended = asyncio.Event()

    async def next_request(self) -> pb.WatchRequest:
        return await asyncio.wait_for(self.requests.get(), WAIT)

    async def next_create(self) -> pb.WatchCreateRequest:
        req = await self.next_request()
        assert req.WhichOneof("request_union") == "create_request", req
        return req.create_request

    def send(self, resp: pb.WatchResponse) -> None:
        self.out.put_nowait(resp)

    def created(self, watch_id: int, revision: int) -> None:
        self.send(pb.WatchResponse(header=hdr(revision), watch_id=watch_id, created=True))

    def events(self, watch_id: int, revision: int, *revs: int, key: bytes = b"k") -> None:
        self.send(
            pb.WatchResponse(
                header=hdr(revision),
                watch_id=watch_id,
                events=[
                    pb.Event(kv=pb.KeyValue(key=key, mod_revision=r, create_revision=r, value=b"v"))
                    for r in revs
                ],
            )
        )

    def abort(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.out.put_nowait(code)


def hdr(revision: int) -> pb.ResponseHeader:
    return pb.ResponseHeader(revision=revision)


class FakeWatchServer(pbg.WatchServicer):
    def __init__(self) -> None:
        self.streams: asyncio.Queue[FakeStream] = asyncio.Queue()
        self.opened = 0

    async def next_stream(self) -> FakeStream:
        return await asyncio.wait_for(self.streams.get(), WAIT)

    async def Watch(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.WatchResponse]:
        st = FakeStream()
        self.opened += 1
        self.streams.put_nowait(st)

        async def pump() -> None:
            async for r in request_iterator:
                st.requests.put_nowait(r)

        reader = asyncio.create_task(pump())
        try:
            while True:
                item = await st.out.get()
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "scripted failure")
                else:
                    yield item
        finally:
            reader.cancel()
            st.ended.set()


@contextlib.asynccontextmanager
async def serving(*fakes: FakeWatchServer) -> AsyncIterator[list[str]]:
    servers: list[grpc.aio.Server] = []
    endpoints: list[str] = []
    try:
        for fake in fakes:
            server = grpc.aio.server()
            pbg.add_WatchServicer_to_server(fake, server)
            port = server.add_insecure_port("127.0.0.1:0")
            servers.append(server)
            await server.start()
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for s in servers:
            await s.stop(None)


@contextlib.asynccontextmanager
async def client_for(endpoints: Sequence[str], **kw: Any) -> AsyncIterator[GrpcRegistryClient]:
    c = GrpcRegistryClient(endpoints, timeout=2.0, connect_timeout=1.0, backoff_base=0.01, **kw)
    try:
        yield c
    finally:
        await c.close()


async def next_batch(w: Watch) -> WatchBatch:
    return await asyncio.wait_for(w.__anext__(), WAIT)


def revs(b: WatchBatch) -> list[int]:
    return [e.kv.mod_revision for e in b.events]


async def open_watch(
    c: GrpcRegistryClient, server: FakeWatchServer, watch_id: int, revision: int, **kw: Any
) -> tuple[Watch, FakeStream, pb.WatchCreateRequest]:
    """Create a watch and confirm it on the server's next (or current) stream."""
    creating = asyncio.ensure_future(c.watch("k", **kw))
    st = await server.next_stream()
    req = await st.next_create()
    st.created(watch_id, revision)
    return await asyncio.wait_for(creating, WAIT), st, req


async def test_resume_after_a_dropped_stream_fails_over_with_no_gap_and_no_duplicate() -> None:
    a, b = FakeWatchServer(), FakeWatchServer()
    async with serving(a, b) as eps, client_for(eps) as c:
        w, st, req = await open_watch(c, a, watch_id=7, revision=10, prefix=True)
        assert req.key == b"k" and req.range_end == b"l" and req.start_revision == 0
        assert c.watch_endpoint == eps[0]
        st.events(7, 12, 11, 12)
        st.events(7, 13, 13)
        assert revs(await next_batch(w)) == [11, 12]
        assert revs(await next_batch(w)) == [13]
        st.abort()
        # The client fails over to the other endpoint and resumes after the last revision.
        st2 = await b.next_stream()
        again = await st2.next_create()
        assert again.start_revision == 14 and again.key == b"k" and again.range_end == b"l"
        st2.created(3, 15)
        st2.events(3, 15, 13, 14, 15)  # 13 again (a misbehaving server): dropped
        assert revs(await next_batch(w)) == [14, 15]
        assert c.watch_endpoint == eps[1] and c.watch_streams_opened == 2


async def test_start_revision_zero_resumes_after_the_creation_revision() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        w, st, _ = await open_watch(c, a, watch_id=1, revision=20)
        assert w.resume_revision == 21
        st.abort()
        st2 = await a.next_stream()  # the only endpoint: reconnect to it after a backoff
        assert (await st2.next_create()).start_revision == 21


async def test_an_explicit_start_is_kept_until_something_is_delivered() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        w, st, req = await open_watch(c, a, watch_id=1, revision=20, start_revision=5)
        assert req.start_revision == 5
        st.abort()
        st2 = await a.next_stream()
        assert (await st2.next_create()).start_revision == 5
        st2.created(4, 20)
        st2.events(4, 20, 5)
        assert revs(await next_batch(w)) == [5]


async def test_a_slow_watcher_cancel_is_recreated_from_last_plus_one_on_the_same_stream() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        w, st, _ = await open_watch(c, a, watch_id=1, revision=5)
        st.events(1, 6, 6)
        st.send(
            pb.WatchResponse(
                header=hdr(9), watch_id=1, canceled=True, cancel_reason="watcher is too slow"
            )
        )
        again = await st.next_create()
        assert again.start_revision == 7
        st.created(2, 9)
        st.events(2, 9, 7, 8, 9)
        assert revs(await next_batch(w)) == [6]
        assert revs(await next_batch(w)) == [7, 8, 9]
        assert a.opened == 1


async def test_compaction_yields_one_compacted_batch_and_ends() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        w, st, _ = await open_watch(c, a, watch_id=1, revision=5)
        st.events(1, 6, 6)
        st.send(
            pb.WatchResponse(header=hdr(50), watch_id=1, canceled=True, compact_revision=40)
        )
        assert revs(await next_batch(w)) == [6]
        b = await next_batch(w)
        assert b.compacted and b.compact_revision == 40
        with pytest.raises(StopAsyncIteration):
            await next_batch(w)


async def test_compaction_at_creation_is_a_compacted_watch() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        creating = asyncio.ensure_future(c.watch("k", start_revision=2))
        st = await a.next_stream()
        await st.next_create()
        st.send(
            pb.WatchResponse(
                header=hdr(50), watch_id=9, created=True, canceled=True, compact_revision=40
            )
        )
        w = await asyncio.wait_for(creating, WAIT)
        b = await next_batch(w)
        assert b.compacted and b.compact_revision == 40


async def test_concurrent_creates_share_one_stream_and_are_matched_in_order() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        keys = [b"a", b"b", b"c"]
        creating = [asyncio.ensure_future(c.watch(k)) for k in keys]
        st = await a.next_stream()
        seen = [(await st.next_create()).key for _ in keys]
        assert sorted(seen) == keys
        for i, _ in enumerate(seen):
            st.created(100 + i, 10)
        watches = {w.options.key: w for w in await asyncio.gather(*creating)}
        # Route events by the server id given to each create, in request order.
        for i, key in enumerate(seen):
            st.events(100 + i, 11 + i, 11 + i, key=key)
        for i, key in enumerate(seen):
            b = await next_batch(watches[key])
            assert b.events[0].kv.key == key and revs(b) == [11 + i]
        assert a.opened == 1
        assert len({w.watch_id for w in watches.values()}) == 3


async def test_cancel_sends_a_cancel_request_and_ends_iteration() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        w, st, _ = await open_watch(c, a, watch_id=33, revision=5)
        w.cancel()
        req = await st.next_request()
        assert req.WhichOneof("request_union") == "cancel_request"
        assert req.cancel_request.watch_id == 33
        with pytest.raises(StopAsyncIteration):
            await next_batch(w)


async def test_progress_is_surfaced_only_when_asked_and_moves_the_resume_point() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps, client_for(eps) as c:
        loud, st, _ = await open_watch(c, a, watch_id=1, revision=5, progress_notify=True)
        creating = asyncio.ensure_future(c.watch("q"))
        await st.next_create()
        st.created(2, 5)
        quiet = await asyncio.wait_for(creating, WAIT)
        await c.request_progress()
        req = await st.next_request()
        assert req.WhichOneof("request_union") == "progress_request"
        st.send(pb.WatchResponse(header=hdr(30), watch_id=-1))
        b = await next_batch(loud)
        assert b.progress and b.revision == 30 and not b.events
        # A per-watch progress notification (server-initiated) works the same way.
        st.send(pb.WatchResponse(header=hdr(31), watch_id=1))
        assert (await next_batch(loud)).revision == 31
        st.events(2, 32, 32)
        assert revs(await next_batch(quiet)) == [32]  # no progress batch before it
        st.abort()
        st2 = await a.next_stream()
        starts = sorted([(await st2.next_create()).start_revision for _ in range(2)])
        assert starts == [32, 33]


async def test_a_refused_create_raises_and_an_unanswered_one_times_out() -> None:
    a = FakeWatchServer()
    # The refusal must arrive within the client's budget: the default one (2 x timeout). The
    # unanswered create then runs out of a short budget on a second client.
    async with serving(a) as eps, client_for(eps) as c, \
            client_for(eps, retry_budget=0.5) as impatient:
        creating = asyncio.ensure_future(c.watch("k"))
        st = await a.next_stream()
        await st.next_create()
        st.send(
            pb.WatchResponse(
                header=hdr(5), watch_id=-1, created=True, canceled=True,
                cancel_reason="key is not provided",
            )
        )
        with pytest.raises(InvalidArgument, match="key is not provided"):
            await asyncio.wait_for(creating, WAIT)
        with pytest.raises(Unavailable):
            await impatient.watch("k")  # the server never confirms it


async def test_close_ends_every_watch() -> None:
    a = FakeWatchServer()
    async with serving(a) as eps:
        c = GrpcRegistryClient(eps, timeout=2.0)
        w, st, _ = await open_watch(c, a, watch_id=1, revision=5)
        waiting = asyncio.ensure_future(next_batch(w))
        await c.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, WAIT)
        await asyncio.wait_for(st.ended.wait(), WAIT)
