"""The shared watch stream: every watch of one client goes over ONE bidi Watch stream.

This module owns the backend-neutral algorithm; a backend supplies a `WatchWire` (its messages,
how to open the call on one of its connections, its event conversion and error mapping) and
its `EndpointPool`. Used by `raftreg.client.raftreg_watch_wire` (raftreg) and
`raftreg.client.etcd.watch_wire` (etcd).

Contracts:
- Watch ids are chosen by the server. The server handles a stream's requests in order and
  answers every create (success or refusal) with a `created` response, in that order, before
  any event of that watch; so creates are matched to watches first-in first-out.
- The stream is opened when the first watch is added and goes to the first healthy endpoint of
  the pool (watches are served by any member). On any stream error or end it is re-opened on
  the next endpoint after a backoff with jitter, and every live watch is re-created with
  `start_revision = Watch.resume_revision` (see `raftreg.client.resumable_watch`), so the
  caller sees no gap and no duplicate. Only `InvalidArgument`, `PermissionDenied` and
  `Unauthenticated` from the stream are final: they end every watch with that error.
- A refused create (`created` + `canceled`) ends that watch: with a compacted batch when
  `compact_revision > 0` (a start below the compaction point), else with `InvalidArgument`
  (`PermissionDenied` when the reason says "permission denied", as etcd's and raftreg's do).
  A later server cancel with `compact_revision > 0` ends the watch with a compacted batch; any
  other server cancel (e.g. a slow watcher) re-creates it at once on the same stream.
- Progress responses for the whole stream (`watch_id == -1`) apply to every registered watch;
  per-watch ones (no events, not created/cancelled) to that watch.
- Once the client is closed (`is_closed()`), a failed stream is not re-opened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.client import aio
from raftreg.client.bidi import BidiCall, write_all
from raftreg.client.endpoint_pool import EndpointPool, NotConnected
from raftreg.client.resumable_watch import Watch, WatchOptions
from raftreg.common.types import Event

C = TypeVar("C")

_FATAL = (E.InvalidArgument, E.PermissionDenied, E.Unauthenticated)


def _refusal(reason: str) -> E.RegistryError:
    """The error of a refused watch create, from the server's cancel reason."""
    if "permission denied" in reason.lower():
        return E.PermissionDenied(reason)
    return E.InvalidArgument(reason or "watch refused")

WatchCall = BidiCall


@dataclass(frozen=True, slots=True)
class WatchAnswer:
    """One watch response, backend-neutral. `revision` is the response header's revision;
    `events` are already converted to raftreg's `Event`."""

    watch_id: int
    revision: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    events: Sequence[Event]


@dataclass(frozen=True, slots=True)
class WatchWire(Generic[C]):
    """What differs between backends.

    `messages` is the backend's generated module; its WatchRequest, WatchCreateRequest,
    WatchCancelRequest, WatchProgressRequest and WatchResponse have etcd's fields and
    numbering (raftreg's API has etcd's shape; `WatchFilter` values are etcd's FilterType).
    `open(conn)` starts the Watch call on an endpoint's connection object, `event` converts one
    event message, `error` maps a failed call to a `raftreg.errors` exception. Log lines go to
    `log`, naming the backend's watches `label` ("watch", "etcd watch")."""

    label: str
    log: logging.Logger
    messages: ModuleType
    open: Callable[[C], WatchCall]
    event: Callable[[Any], Event]
    error: Callable[[grpc.aio.AioRpcError], E.RegistryError]

    def create_request(self, o: WatchOptions, start_revision: int) -> Message:
        m = self.messages
        req: Message = m.WatchRequest(
            create_request=m.WatchCreateRequest(
                key=o.key,
                range_end=o.range_end,
                start_revision=start_revision,
                progress_notify=o.progress_notify,
                filters=[int(f) for f in sorted(o.filters)],
                prev_kv=o.prev_kv,
            )
        )
        return req

    def cancel_request(self, watch_id: int) -> Message:
        m = self.messages
        req: Message = m.WatchRequest(cancel_request=m.WatchCancelRequest(watch_id=watch_id))
        return req

    def progress_request(self) -> Message:
        m = self.messages
        req: Message = m.WatchRequest(progress_request=m.WatchProgressRequest())
        return req

    def parse(self, resp: Any) -> WatchAnswer | None:
        """The answer in a message read from the call; None when the call ended (EOF)."""
        if not isinstance(resp, self.messages.WatchResponse):  # grpc.aio.EOF
            return None
        return WatchAnswer(
            watch_id=resp.watch_id,
            revision=resp.header.revision,
            created=resp.created,
            canceled=resp.canceled,
            compact_revision=resp.compact_revision,
            cancel_reason=resp.cancel_reason,
            events=[self.event(e) for e in resp.events],
        )


class _StreamEnded(Exception):
    pass


class _Stream:
    """The bookkeeping of one open Watch call (requests out, responses in)."""

    def __init__(self, endpoint: str, wire: WatchWire[Any]) -> None:
        self.endpoint = endpoint
        self._wire = wire
        self.outgoing: asyncio.Queue[Message] = asyncio.Queue()
        self.pending: collections.deque[Watch] = collections.deque()
        self.by_server_id: dict[int, Watch] = {}

    def create(self, w: Watch) -> None:
        w.server_watch_id = -1
        self.pending.append(w)
        self.outgoing.put_nowait(self._wire.create_request(w.options, w.resume_revision))

    def cancel(self, w: Watch) -> None:
        """Cancel on the server (a still-pending create is cancelled when it is confirmed)."""
        sid = w.server_watch_id
        if self.by_server_id.get(sid) is w:
            del self.by_server_id[sid]
            self.outgoing.put_nowait(self._wire.cancel_request(sid))

    def progress(self) -> None:
        self.outgoing.put_nowait(self._wire.progress_request())

    def handle(self, a: WatchAnswer) -> None:
        rev = a.revision
        wid = a.watch_id
        if a.created:
            if not self.pending:
                self._wire.log.warning(
                    "%s: unexpected created response for id %d", self._wire.label, wid
                )
                return
            w = self.pending.popleft()
            if a.canceled:
                if a.compact_revision > 0:
                    w._on_compacted(a.compact_revision, rev)
                else:
                    w._on_failed(_refusal(a.cancel_reason))
                return
            if w.done:  # cancelled by the caller while the create was in flight
                self.outgoing.put_nowait(self._wire.cancel_request(wid))
                return
            w.server_watch_id = wid
            self.by_server_id[wid] = w
            w._on_created(rev)
            return
        if a.canceled:
            w_ = self.by_server_id.pop(wid, None)
            if w_ is None or w_.done:
                return
            w_.server_watch_id = -1
            if a.compact_revision > 0:
                w_._on_compacted(a.compact_revision, rev)
            else:
                self._wire.log.info(
                    "%s %d cancelled by the server (%s); re-creating from %d",
                    self._wire.label, w_.watch_id, a.cancel_reason, w_.resume_revision,
                )
                self.create(w_)
            return
        if a.events:
            target = self.by_server_id.get(wid)
            if target is not None:
                target._on_events(rev, list(a.events))
            return
        if wid == -1:
            for w in list(self.by_server_id.values()):
                w._on_progress(rev)
            return
        target = self.by_server_id.get(wid)
        if target is not None:
            target._on_progress(rev)


class WatchMux(Generic[C]):
    """All watches of one client, over one stream; see the module docstring.

    `mark_failed(endpoint)` is called when the stream to `endpoint` fails (default: the pool's;
    a client may pass its own that also forgets routing state); `is_closed()` says whether the
    client is closed (then a failed stream is not re-opened)."""

    def __init__(
        self,
        wire: WatchWire[C],
        pool: EndpointPool[C],
        *,
        connect_timeout: float,
        mark_failed: Callable[[str], None] | None = None,
        is_closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._wire = wire
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._mark_failed = mark_failed or pool.mark_failed
        self._is_closed = is_closed
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

    async def watch(self, options: WatchOptions, limit: float) -> Watch:
        """Add a watch for `options`; return it once the server confirmed it. Raises
        `Unavailable` when no endpoint confirmed it within `limit` seconds, or the error the
        watch failed with (e.g. a refused create); the watch is cancelled whenever this
        raises."""
        w = Watch(options, self.cancel)
        self.add(w)
        try:
            await aio.wait_for(w._wait_created(), limit)
        except TimeoutError:
            w.cancel()
            raise E.Unavailable(
                f"watch not confirmed by any endpoint within {limit:g}s"
            ) from None
        except BaseException:
            w.cancel()
            raise
        if w._failed is not None:
            w.cancel()
            raise w._failed
        return w

    def add(self, w: Watch) -> None:
        if self._closed:
            raise E.ClientClosed("client is closed")
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
        wire, pool = self._wire, self._pool
        attempt = 0
        while not self._closed:
            if not self._live():
                self._added.clear()
                await self._added.wait()
                continue
            ep = pool.ordered()[0]
            stream = _Stream(ep, wire)
            call: WatchCall = None
            writer: asyncio.Task[None] | None = None
            err: E.RegistryError
            try:
                await pool.connect(ep, self._connect_timeout)
                call = wire.open(pool.conn(ep))
                writer = asyncio.get_running_loop().create_task(write_all(call, stream.outgoing))
                self._stream = stream
                self.streams_opened += 1
                for w in self._live():
                    stream.create(w)
                while True:
                    answer = wire.parse(await call.read())
                    if answer is None:  # grpc.aio.EOF
                        raise _StreamEnded
                    if attempt:
                        attempt = 0
                        pool.mark_ok(ep)
                    stream.handle(answer)
            except grpc.aio.AioRpcError as e:
                err = wire.error(e)
            except _StreamEnded:
                err = E.Unavailable(f"watch stream to {ep} ended")
            except E.RegistryError as e:
                err = e
            except NotConnected as e:
                err = E.Unavailable(str(e))
            except Exception as e:
                wire.log.exception("%s stream to %s: unexpected error", wire.label, ep)
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
            wire.log.info("%s stream to %s failed (%s); reconnecting", wire.label, ep, err)
            self._mark_failed(ep)
            attempt += 1
            await asyncio.sleep(pool.backoff(attempt))
