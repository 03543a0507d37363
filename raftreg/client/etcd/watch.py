"""The etcd adapter's watches: every watch of one client shares ONE etcd Watch stream.

The caller-facing object is raftreg's own `raftreg.client.watch.Watch` (which owns the resume
bookkeeping), so watches have the same guarantees on both backends. Contracts (as for the raftreg
client's `raftreg.client.grpc_watch`):
- etcd picks watch ids (we send watch_id 0) and answers the creates of one stream in order,
  each with a `created` response before any event of that watch: creates are matched FIFO.
- The stream goes to the first healthy endpoint. On any stream error or end it is re-opened on
  the next endpoint after a backoff with jitter, and every live watch is re-created from
  `Watch.resume_revision`: no gap, no duplicate.
- etcd reports a start revision below the compaction point as `created`, then `canceled` with
  `compact_revision > 0`: the watch ends with one compacted batch. A refused create
  (`created` + `canceled` without compaction) ends the watch with `InvalidArgument`; any other
  server cancel re-creates the watch. `InvalidArgument`, `PermissionDenied` and
  `Unauthenticated` from the stream end every watch with that error.
- Progress answers to `request_progress` carry watch_id -1 and apply to every watch.
  Known etcd 3.5.1 limitation: such an answer may be sent before events of an unsynced
  watcher (fixed in later etcd releases); the `Watch` still delivers those events, and at
  worst a re-create after a stream failure could resume past them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from raftreg import errors as E
from raftreg.client.etcd.convert import event_from_pb
from raftreg.client.etcd.errors import rpc_error
from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.client.etcd.pool import NotConnected
from raftreg.client.watch import Watch, WatchOptions

log = logging.getLogger("raftreg.client.etcd.watch")

WATCH_PATH = "/etcdserverpb.Watch/Watch"
_FATAL = (E.InvalidArgument, E.PermissionDenied, E.Unauthenticated)


class WatchHost(Protocol):
    """What the mux needs from its client: endpoints, connections, failure marks, backoff."""

    connect_timeout: float

    def ordered(self) -> list[str]: ...

    async def connect(self, endpoint: str, limit: float) -> None: ...

    def open_watch(self, endpoint: str) -> Any: ...

    def mark_failed(self, endpoint: str) -> None: ...

    def mark_ok(self, endpoint: str) -> None: ...

    def backoff(self, attempt: int) -> float: ...


def create_request(o: WatchOptions, start_revision: int) -> pb.WatchRequest:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=o.key,
            range_end=o.range_end,
            start_revision=start_revision,
            progress_notify=o.progress_notify,
            filters=[int(f) for f in sorted(o.filters)],  # type: ignore[misc]
            prev_kv=o.prev_kv,
        )
    )


def _cancel_request(watch_id: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))


class _StreamEnded(Exception):
    pass


class _Stream:
    """The bookkeeping of one open etcd Watch call."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.outgoing: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        self.pending: collections.deque[Watch] = collections.deque()
        self.by_server_id: dict[int, Watch] = {}

    async def write_all(self, call: Any) -> None:
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
        sid = w.server_watch_id
        if self.by_server_id.get(sid) is w:
            del self.by_server_id[sid]
            self.outgoing.put_nowait(_cancel_request(sid))

    def progress(self) -> None:
        self.outgoing.put_nowait(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def handle(self, resp: pb.WatchResponse) -> None:
        rev = resp.header.revision
        wid = resp.watch_id
        if resp.created:
            if not self.pending:
                log.warning("etcd watch: unexpected created response for id %d", wid)
                return
            w = self.pending.popleft()
            if resp.canceled:
                if resp.compact_revision > 0:
                    w._on_compacted(resp.compact_revision, rev)
                else:
                    w._on_failed(E.InvalidArgument(resp.cancel_reason or "watch refused"))
                return
            if w.done:  # cancelled by the caller while the create was in flight
                self.outgoing.put_nowait(_cancel_request(wid))
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
                log.info("etcd watch %d cancelled by the server (%s); re-creating from %d",
                         w_.watch_id, resp.cancel_reason, w_.resume_revision)
                self.create(w_)
            return
        if resp.events:
            target = self.by_server_id.get(wid)
            if target is not None:
                target._on_events(rev, [event_from_pb(e) for e in resp.events])
            return
        if wid == -1:
            for w in list(self.by_server_id.values()):
                w._on_progress(rev)
            return
        target = self.by_server_id.get(wid)
        if target is not None:
            target._on_progress(rev)


class EtcdWatchMux:
    """All watches of one `EtcdRegistryClient`, over one stream; see the module docstring."""

    def __init__(self, host: WatchHost, is_closed: Callable[[], bool]) -> None:
        self._host = host
        self._is_closed = is_closed
        self._watches: dict[int, Watch] = {}
        self._added = asyncio.Event()
        self._stream: _Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.streams_opened = 0

    @property
    def endpoint(self) -> str | None:
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
        h = self._host
        attempt = 0
        while not self._closed:
            if not self._live():
                self._added.clear()
                await self._added.wait()
                continue
            ep = h.ordered()[0]
            stream = _Stream(ep)
            call: Any = None
            writer: asyncio.Task[None] | None = None
            err: E.RegistryError
            try:
                await h.connect(ep, h.connect_timeout)
                call = h.open_watch(ep)
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
                        h.mark_ok(ep)
                    stream.handle(resp)
            except grpc.aio.AioRpcError as e:
                err = rpc_error(e)
            except _StreamEnded:
                err = E.Unavailable(f"watch stream to {ep} ended")
            except E.RegistryError as e:
                err = e
            except NotConnected as e:
                err = E.Unavailable(str(e))
            except Exception as e:
                log.exception("etcd watch stream to %s: unexpected error", ep)
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
            if self._is_closed():
                return
            log.info("etcd watch stream to %s failed (%s); reconnecting", ep, err)
            h.mark_failed(ep)
            attempt += 1
            await asyncio.sleep(h.backoff(attempt))
