"""Client-side watches: `WatchBatch`, `WatchOptions` and the resumable `Watch` iterator.

A `Watch` is what every `RegistryClient.watch()` returns, whatever the backend. The backend
(the gRPC client's shared stream, or the in-memory client) feeds it through the `_on_*`
methods; the `Watch` owns the resume bookkeeping, so every backend has the same guarantees:

- Batches carry whole revisions in increasing order; across reconnects and server-side
  re-creates the caller sees no gap and no duplicate. Second line of defence: an event whose
  revision is <= the last delivered event revision is dropped.
- `resume_revision` is the `start_revision` to use when the watch is (re-)created: the original
  start until something is known; after creation at header revision H with start 0, H + 1;
  after events up to revision R, R + 1; after a progress notification at R, R + 1.
- Compaction (the server cancels with `compact_revision > 0`) yields exactly one
  `WatchBatch(compacted=True, compact_revision=...)` and then the iterator ends: the caller
  re-lists and watches again.
- `cancel()` (or leaving `async with`) ends the iteration at once (pending batches are
  discarded); closing the client ends it too. A watch that failed for good (e.g. the server
  refused the create) raises that `RegistryError` from iteration.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Self

from raftreg.common.types import Event, EventType
from raftreg.errors import InvalidArgument, RegistryError

ALL_KEYS = b"\0"


class WatchFilter(IntEnum):
    """Server-side event filters (etcd's `WatchCreateRequest.FilterType`)."""

    NOPUT = 0
    NODELETE = 1


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One response for the caller.

    - events: `revision` is the server's header revision (>= the last event's revision);
      `events` hold one or more whole revisions, in order.
    - progress (`progress=True`, no events): every change up to `revision` on the watched
      range has been delivered. Only for watches created with `progress_notify=True`.
    - compaction (`compacted=True`): history from the resume point is gone
      (`compact_revision` is the oldest revision still available); the iterator ends after
      this batch.
    """

    revision: int
    events: tuple[Event, ...] = ()
    compacted: bool = False
    compact_revision: int = 0
    progress: bool = False


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """A watch's selection, as given to `RegistryClient.watch` (range resolved to bytes)."""

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    filters: frozenset[WatchFilter] = frozenset()
    progress_notify: bool = False

    @classmethod
    def make(
        cls,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int,
        prev_kv: bool,
        filters: Iterable[WatchFilter | int],
        progress_notify: bool,
    ) -> WatchOptions:
        """Validated options. An empty key with range_end b"\\0" (a prefix watch on b"") is
        rewritten to key b"\\0" (every non-empty key), as the server refuses an empty key."""
        if start_revision < 0:
            raise InvalidArgument("start_revision must be >= 0")
        if not key:
            if range_end != ALL_KEYS:
                raise InvalidArgument("key is not provided")
            key = ALL_KEYS
        try:
            fs = frozenset(WatchFilter(f) for f in filters)
        except ValueError:
            raise InvalidArgument(f"unknown watch filter in {list(filters)!r}") from None
        return cls(key, range_end, start_revision, prev_kv, fs, progress_notify)

    def selects(self, event: Event) -> bool:
        """Whether `event` is on the watched keys and passes the filters."""
        if (WatchFilter.NOPUT in self.filters and event.type == EventType.PUT) or (
            WatchFilter.NODELETE in self.filters and event.type == EventType.DELETE
        ):
            return False
        k, end = event.kv.key, self.range_end
        if not end:
            return k == self.key
        if end == ALL_KEYS:
            return k >= self.key
        return self.key <= k < end


_local_ids = itertools.count(1)


class Watch:
    """An async iterator of `WatchBatch`; see the module docstring for the guarantees.

    `watch_id` is stable for the life of the watch and unique in the process (the server's
    id changes with every re-create; `server_watch_id` is the current one, -1 while not
    registered). Use as `async with await client.watch(...) as w: async for batch in w: ...`.
    """

    def __init__(self, options: WatchOptions, on_cancel: Callable[[Watch], None]) -> None:
        self.options = options
        self.watch_id = next(_local_ids)
        self.server_watch_id = -1
        self._on_cancel = on_cancel
        self._queue: collections.deque[WatchBatch] = collections.deque()
        self._wakeup = asyncio.Event()
        self._ended = False  # no more batches will be queued
        self._cancelled = False  # the caller cancelled; iteration stops at once
        self._error: RegistryError | None = None
        self._created = asyncio.Event()
        self._resume = options.start_revision
        self._last_event_revision = 0
        self._created_once = False

    # ------------------------------------------------------------------ caller side

    @property
    def resume_revision(self) -> int:
        """The start_revision a (re-)create uses now; 0 = "from now" (nothing known yet)."""
        return self._resume

    @property
    def last_event_revision(self) -> int:
        """The revision of the last event handed to the caller (0 = none yet)."""
        return self._last_event_revision

    @property
    def done(self) -> bool:
        """True once the watch can yield nothing more (cancelled, compacted, failed, closed)."""
        return self._cancelled or (self._ended and not self._queue)

    def cancel(self) -> None:
        """Stop the watch: iteration ends at once; the backend cancels it on the server.
        Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._ended = True
        self._queue.clear()
        self._wakeup.set()
        self._created.set()
        self._on_cancel(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            if self._queue:
                return self._queue.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    # ------------------------------------------------------------------ backend side

    async def _wait_created(self) -> None:
        """Until the first create was confirmed, or the watch ended."""
        await self._created.wait()

    def _push(self, batch: WatchBatch) -> None:
        if not self._ended:
            self._queue.append(batch)
            self._wakeup.set()

    def _on_created(self, header_revision: int) -> None:
        """The server confirmed a (re-)create at `header_revision`. For a watch that started
        "from now", that fixes the resume point to header_revision + 1."""
        self._created_once = True
        if self._resume == 0:
            self._resume = header_revision + 1
        self._created.set()

    def _on_events(self, revision: int, events: Iterable[Event]) -> None:
        """Deliver `events` (whole revisions, in order), dropping any already delivered."""
        fresh = tuple(e for e in events if e.kv.mod_revision > self._last_event_revision)
        if not fresh or self._ended:
            return
        last = fresh[-1].kv.mod_revision
        self._last_event_revision = last
        self._resume = max(self._resume, last + 1)
        self._push(WatchBatch(max(revision, last), fresh))

    def _on_progress(self, revision: int) -> None:
        """Everything up to `revision` has been sent on this watch: resume after it; surface
        it only when the watch asked for progress notifications."""
        if self._ended or revision <= 0:
            return
        self._resume = max(self._resume, revision + 1)
        if self.options.progress_notify:
            self._push(WatchBatch(revision, progress=True))

    def _on_compacted(self, compact_revision: int, revision: int) -> None:
        """The resume point has been compacted away: one compacted batch, then the end."""
        if self._ended:
            return
        self._push(WatchBatch(revision, compacted=True, compact_revision=compact_revision))
        self._ended = True
        self._created.set()

    def _on_failed(self, error: RegistryError) -> None:
        """End the watch with `error` (raised by iteration after queued batches)."""
        if self._ended:
            return
        self._error = error
        self._ended = True
        self._wakeup.set()
        self._created.set()

    def _on_closed(self) -> None:
        """The client was closed: the iteration ends after queued batches."""
        self._ended = True
        self._wakeup.set()
        self._created.set()

    @property
    def _failed(self) -> RegistryError | None:
        return self._error

    @property
    def _was_created(self) -> bool:
        return self._created_once
