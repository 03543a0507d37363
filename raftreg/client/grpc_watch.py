"""The gRPC client's watches: every watch of one client shares ONE bidi Watch stream.

Contracts:
- Watch ids are chosen by the server. The server handles a stream's requests in order and
  answers every create (success or refusal) with a `created` response, in that order, before
  any event of that watch; so creates are matched to watches first-in first-out.
- The stream is opened when the first watch is added and goes to the first healthy endpoint
  (watches are served by any node). On any stream error or end it is re-opened on the next
  endpoint after a backoff with jitter, and every live watch is re-created with
  `start_revision = Watch.resume_revision` (see `raftreg.client.watch`), so the caller sees
  no gap and no duplicate. Only `InvalidArgument`, `PermissionDenied` and `Unauthenticated`
  from the stream are final: they end every watch with that error.
- A server cancel with `compact_revision > 0` ends that watch with a compacted batch; any
  other server cancel (e.g. a slow watcher) re-creates it at once on the same stream.
- Progress responses for the whole stream (`watch_id == -1`) apply to every registered watch;
  per-watch ones (no events, not created/cancelled) to that watch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from raftreg import errors as E
from raftreg.api import convert
from raftreg.client.watch import Watch, WatchFilter, WatchOptions
from raftreg.pb import raftreg_pb2 as pb

if TYPE_CHECKING:
    from raftreg.client.grpc_client import GrpcRegistryClient

log = logging.getLogger("raftreg.client.watch")

_FATAL = (E.InvalidArgument, E.PermissionDenied, E.Unauthenticated)

_FILTERS = {
    WatchFilter.NOPUT: pb.WatchCreateRequest.NOPUT,
    WatchFilter.NODELETE: pb.WatchCreateRequest.NODELETE,
}


def create_request(o: WatchOptions, start_revision: int) -> pb.WatchRequest:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=o.key,
            range_end=o.range_end,
            start_revision=start_revision,
            progress_notify=o.progress_notify,
            filters=[_FILTERS[f] for f in sorted(o.filters)],
            prev_kv=o.prev_kv,
        )
    )


class _StreamEnded(Exception):
    pass


class _Stream:
    """The bookkeeping of one open Watch call (requests out, responses in)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.outgoing: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        self.pending: collections.deque[Watch] = collections.deque()
        self.by_server_id: dict[int, Watch] = {}

    async def write_all(
        self, call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse]
    ) -> None:
        """The stream's one writer (grpc.aio allows one write in flight), until cancelled."""
        while True:
            req = await self.outgoing.get()
            try:
                await call.write(req)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the read side reports the failure

    def create(self, w: Watch) -> None:
        w.server_watch_id = -1
        self.pending.append(w)
        self.outgoing.put_nowait(create_request(w.options, w.resume_revision))

    def cancel(self, w: Watch) -> None:
        """Cancel on the server (a still-pending create is cancelled when it is confirmed)."""
        sid = w.server_watch_id
        if self.by_server_id.get(sid) is w:
            del self.by_server_id[sid]
            self.outgoing.put_nowait(
                pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=sid))
            )

    def progress(self) -> None:
        self.outgoing.put_nowait(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def handle(self, resp: pb.WatchResponse) -> None:
        rev = resp.header.revision
        wid = resp.watch_id
        if resp.created:
            if not self.pending:
                log.warning("watch: unexpected created response for id %d", wid)
                return
            w = self.pending.popleft()
            if resp.canceled:
                if resp.compact_revision > 0:
                    w._on_compacted(resp.compact_revision, rev)
                else:
                    w._on_failed(E.InvalidArgument(resp.cancel_reason or "watch refused"))
                return
            if w.done:  # cancelled by the caller while the create was in flight
                self.outgoing.put_nowait(
                    pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=wid))
                )
                return
            w.server_watch_id = wid
            self.by_server_id[wid] = w
            w._on_created(rev)
            return
        if resp.canceled:
            w_ = self.by_server_id.pop(wid, None)
            if w_ is None or w_.done:
                return
            w_.server_watch_id = -1
            if resp.compact_revision > 0:
                w_._on_compacted(resp.compact_revision, rev)
            else:
                log.info("watch %d cancelled by the server (%s); re-creating from %d",
                         w_.watch_id, resp.cancel_reason, w_.resume_revision)
                self.create(w_)
            return
        if resp.events:
            target = self.by_server_id.get(wid)
            if target is not None:
                target._on_events(rev, [convert.event_from_pb(e) for e in resp.events])
            return
        if wid == -1:
            for w in list(self.by_server_id.values()):
                w._on_progress(rev)
            return
        target = self.by_server_id.get(wid)
        if target is not None:
            target._on_progress(rev)


class WatchMux:
    """All watches of one `GrpcRegistryClient`, over one stream; see the module docstring."""

    def __init__(self, client: GrpcRegistryClient) -> None:
        self._client = client
        self._watches: dict[int, Watch] = {}
        self._added = asyncio.Event()
        self._stream: _Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.streams_opened = 0

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the open stream (None while not connected)."""
        return None if self._stream is None else self._stream.endpoint

    def add(self, w: Watch) -> None:
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        self._watches[w.watch_id] = w
        if self._stream is not None:
            self._stream.create(w)
        self._added.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self, w: Watch) -> None:
        self._watches.pop(w.watch_id, None)
        if self._stream is not None:
            self._stream.cancel(w)

    def request_progress(self) -> bool:
        """Ask for a progress notification on the open stream; False when none is open."""
        if self._stream is None:
            return False
        self._stream.progress()
        return True

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for w in list(self._watches.values()):
            w._on_closed()
        self._watches.clear()

    def _live(self) -> list[Watch]:
        for wid in [i for i, w in self._watches.items() if w.done]:
            del self._watches[wid]
        return list(self._watches.values())

    async def _run(self) -> None:
        from raftreg.client.grpc_client import _RetryableFailure, rpc_error

        c = self._client
        attempt = 0
        while not self._closed:
            if not self._live():
                self._added.clear()
                await self._added.wait()
                continue
            ep = c._ordered()[0]
            conn = c._conn(ep)
            stream = _Stream(ep)
            call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse] | None = None
            writer: asyncio.Task[None] | None = None
            err: E.RegistryError
            try:
                await c._connect(conn, c._connect_timeout)
                call = conn.watch.Watch(None)
                writer = asyncio.get_running_loop().create_task(stream.write_all(call))
                self._stream = stream
                self.streams_opened += 1
                for w in self._live():
                    stream.create(w)
                while True:
                    resp = await call.read()
                    if not isinstance(resp, pb.WatchResponse):  # grpc.aio.EOF
                        raise _StreamEnded
                    if attempt:
                        attempt = 0
                        c._mark_ok(ep)
                    stream.handle(resp)
            except grpc.aio.AioRpcError as e:
                err = rpc_error(e)
            except _StreamEnded:
                err = E.Unavailable(f"watch stream to {ep} ended")
            except E.RegistryError as e:
                err = e
            except _RetryableFailure as e:  # could not connect
                err = E.Unavailable(str(e))
            except Exception as e:
                log.exception("watch stream to %s: unexpected error", ep)
                err = E.Unavailable(f"unexpected error: {e!r}")
            finally:
                self._stream = None
                if writer is not None:
                    writer.cancel()
                if call is not None:
                    call.cancel()
                if writer is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
            if isinstance(err, _FATAL):
                for w in self._live():
                    w._on_failed(err)
                continue
            log.info("watch stream to %s failed (%s); reconnecting", ep, err)
            c._mark_failed(ep)
            attempt += 1
            await asyncio.sleep(c._backoff(attempt))
