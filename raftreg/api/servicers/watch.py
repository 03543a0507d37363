"""The Watch service: one bidirectional stream carries many watches of the node's watch hub,
created and cancelled by the client, with progress notifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from raftreg.api.servicers.base import ServicerBase
from raftreg.common import convert
from raftreg.common.types import Event, KeyValue
from raftreg.errors import RegistryError
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode
from raftreg.server.watch_hub import Outgoing, WatchSpec
from raftreg.store.validate import check_key_range


class _ConvertedEvents:
    """Events already converted to protobuf, by the identity of their key-values. The store
    keeps each revision's `KeyValue` objects, and every `Event` it builds (live, or read again
    from history for a watcher catching up; with or without prev_kv) refers to them, so an event
    is converted once for all watchers, not once per watcher. Holds the key-values themselves,
    so an id is never reused while cached."""

    def __init__(self, size: int = 16384) -> None:
        self._size = size
        self._cache: dict[tuple[int, int, int], tuple[KeyValue, KeyValue | None, pb.Event]] = {}

    def __call__(self, e: Event) -> pb.Event:
        key = (id(e.kv), id(e.prev_kv), e.type)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is e.kv and hit[1] is e.prev_kv:
            return hit[2]
        out = convert.event_to_pb(e)
        if len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # the oldest
        self._cache[key] = (e.kv, e.prev_kv, out)
        return out


class WatchServicer(ServicerBase, pbg.WatchServicer):
    def __init__(self, node: RegistryNode, *, etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self._event_pb = _ConvertedEvents()

    def _to_pb(self, m: Outgoing) -> pb.WatchResponse:
        return pb.WatchResponse(
            header=self.header(m.revision),
            watch_id=m.watch_id,
            created=m.created,
            canceled=m.canceled,
            compact_revision=m.compact_revision,
            cancel_reason=m.cancel_reason,
            events=[self._event_pb(e) for e in m.events],
        )

    async def Watch(
        self, request_iterator: AsyncIterator[pb.WatchRequest], context: Any
    ) -> AsyncIterator[pb.WatchResponse]:
        hub = self.node.watches
        stream = hub.open_stream()

        async def read() -> None:
            async for req in request_iterator:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    c = req.create_request
                    try:
                        check_key_range(c.key, c.range_end)
                        spec = WatchSpec(
                            key=c.key,
                            range_end=c.range_end,
                            start_revision=max(c.start_revision, 0),
                            prev_kv=c.prev_kv,
                            no_put=pb.WatchCreateRequest.NOPUT in c.filters,
                            no_delete=pb.WatchCreateRequest.NODELETE in c.filters,
                            progress_notify=c.progress_notify,
                        )
                    except RegistryError as e:
                        stream.send(Outgoing(c.watch_id or -1, self.node.revision, created=True,
                                             canceled=True, cancel_reason=str(e)))
                        continue
                    hub.create(stream, spec, c.watch_id)
                elif which == "cancel_request":
                    hub.cancel(stream, req.cancel_request.watch_id)
                elif which == "progress_request":
                    t = asyncio.create_task(progress())
                    pending.add(t)
                    t.add_done_callback(pending.discard)

        pending: set[asyncio.Task[None]] = set()

        async def progress() -> None:
            # Answered after a read barrier, so the revision it reports covers every write
            # acknowledged before the request, on followers too. A node that cannot reach the
            # majority stays silent (as etcd does while a watcher is not synced).
            try:
                await self.node.barrier()
            except RegistryError:
                return
            hub.progress(stream)

        reader = asyncio.create_task(read())
        try:
            while True:
                msg = await stream.queue.get()
                if msg is None:
                    break
                stream.taken(msg)
                yield self._to_pb(msg)
        finally:
            reader.cancel()
            for t in pending:
                t.cancel()
            stream.close()
