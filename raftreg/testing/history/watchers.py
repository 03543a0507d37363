"""TEST ONLY: the workload's recorded watchers: `raw_watch` (a raw raftreg.v1 Watch stream on
one node that re-creates itself from last revision + 1) and `client_watch` (a client library's
resumable `Watch`), each filling a `WatchRecord` segment by segment until told to stop."""


from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from raftreg import errors as E
from raftreg.client import RegistryClient
from raftreg.common.convert import event_from_pb
from raftreg.common.types import Event
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing.history.records import WatchRecord

# Test-side channels: a private subchannel pool and short reconnect backoff, so a node that
# was killed and restarted is reached again at once (gRPC's shared subchannels otherwise keep
# answering "connection refused" from a cached failure for up to two minutes).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


async def raw_watch(
    endpoint: str,
    rec: WatchRecord,
    start_revision: int,
    stop: asyncio.Event,
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    """A raw Watch stream on one node, re-created from last revision + 1 after any failure
    (on the same node), recorded segment by segment until `stop`."""
    next_rev = start_revision
    while not stop.is_set():
        ch = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()

        async def it(q: asyncio.Queue[pb.WatchRequest | None] = requests) -> AsyncIterator[
            pb.WatchRequest
        ]:
            while (r := await q.get()) is not None:
                yield r

        call: Any = pbg.WatchStub(ch).Watch(it())
        requests.put_nowait(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=rec.key,
                    range_end=rec.range_end,
                    start_revision=next_rev,
                    prev_kv=rec.prev_kv,
                )
            )
        )
        batches: list[tuple[int, list[Event]]] = []
        rec.segments.append((next_rev, batches))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                reader = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({reader, stopper}, return_when="FIRST_COMPLETED")
                if reader not in done:
                    reader.cancel()
                    return
                resp = reader.result()
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                if resp.canceled:
                    rec.end_error = f"canceled: {resp.cancel_reason} ({resp.compact_revision})"
                    return
                if resp.events:
                    evs = [event_from_pb(e) for e in resp.events]
                    batches.append((int(resp.header.revision), evs))
                    next_rev = evs[-1].kv.mod_revision + 1
                    if progress is not None:
                        progress(evs[-1].kv.mod_revision)
        except grpc.aio.AioRpcError:
            pass
        finally:
            stopper.cancel()
            requests.put_nowait(None)
            call.cancel()
            await ch.close(None)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def client_watch(
    client: RegistryClient, rec: WatchRecord, start_revision: int, stop: asyncio.Event
) -> None:
    """The client's resumable `Watch`, recorded as one segment until `stop`."""
    batches: list[tuple[int, list[Event]]] = []
    rec.segments.append((start_revision, batches))
    try:
        w = await client.watch(
            rec.key, range_end=rec.range_end, start_revision=start_revision, prev_kv=rec.prev_kv
        )
    except E.RegistryError as e:
        rec.end_error = f"create failed: {e}"
        return
    stopper = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[Any] | None = None
    try:
        it = w.__aiter__()
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({nxt, stopper}, return_when="FIRST_COMPLETED")
            if nxt not in done:
                nxt.cancel()
                return
            try:
                b = nxt.result()
            except StopAsyncIteration:
                rec.end_error = "iteration ended"
                return
            except E.RegistryError as e:
                rec.end_error = f"failed: {e}"
                return
            if b.compacted:
                rec.end_error = f"compacted at {b.compact_revision}"
                return
            if b.events:
                batches.append((b.revision, list(b.events)))
    finally:
        stopper.cancel()
        w.cancel()
        if nxt is not None:  # retrieved whenever it ends: no "never retrieved" noise
            nxt.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
