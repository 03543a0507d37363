"""The watch hub: watches as observers of the store's applied events (etcd's watchable_store).

Guarantees, per watcher:
- events are delivered in revision order, with no gap and no duplicate, and a revision is never
  split across responses;
- a watch starts at any revision >= the compaction point (catching up from the store's history)
  or is cancelled with the compact revision;
- a stream holds at most `buffer_limit` queued events (a single revision larger than that is
  still sent whole); a watcher whose stream cannot keep up is never cancelled for it, nor does
  it slow apply or other watchers: it stops taking live events and catches up from the store's
  history as its stream drains (etcd's unsynced watchers). Only compaction past what it has
  been sent cancels it, with the compact revision.

How: every watcher tracks `next_rev`, the first revision it has not seen. Catch-up reads
`store.events_since(next_rev)` under the node's lock; live events (published on the event loop
in apply order, after the lock was released) with a revision below `next_rev` are dropped. Both
together cover every revision exactly once. After a snapshot install the live stream has a
hole, so `resync()` makes every watcher catch up again from its `next_rev`.

Catch-up is paced by the stream: history is read (at most what the stream's queue has room
for, in whole revisions) and sent while the queue has room; a watcher with more history than
that is "unsynced" (live events skip it) and continues catching up as the stream drains, then
rejoins the live stream. Nothing is read for a stream with no room: catch-up costs in
proportion to what it sends, however many watchers wait. A live event
that would overflow the queue makes its watcher unsynced the same way, `next_rev` unchanged.
Watch ids are per stream, as in etcd.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from raftreg.common.types import Event, EventType
from raftreg.errors import Compacted, RegistryError

log = logging.getLogger("raftreg.watch")

ALL_KEYS = b"\0"
# Bounds of one catch-up message (a single revision larger than this is still sent whole).
MAX_MSG_EVENTS = 1000
MAX_MSG_BYTES = 1 << 20


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == ALL_KEYS:
        return key >= start
    return start <= key < end


@dataclass(slots=True)
class WatchSpec:
    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False


@dataclass(slots=True)
class Outgoing:
    """One message for a watch stream. `events` hold whole revisions only."""

    watch_id: int
    revision: int
    events: list[Event] = field(default_factory=list)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    size: int = 0  # bytes of `events`, as `_size` counts them


class Watcher:
    def __init__(self, wid: int, spec: WatchSpec, stream: WatchStream) -> None:
        self.id = wid
        self.spec = spec
        self.stream = stream
        self.next_rev = 0
        self.synced = True  # False while catching up from history (live events skip it)
        # Its newest message of events while still queued and nothing for it (a progress
        # notification included) was queued after it: later revisions join it (one write).
        self.queued: Outgoing | None = None

    def select(self, events: list[Event]) -> list[Event]:
        s = self.spec
        out = []
        for e in events:
            if e.kv.mod_revision < self.next_rev or not in_range(e.kv.key, s.key, s.range_end):
                continue
            if (s.no_put and e.type == EventType.PUT) or (
                s.no_delete and e.type == EventType.DELETE
            ):
                continue
            out.append(e if s.prev_kv or e.prev_kv is None else Event(e.type, e.kv, None))
        return out


class WatchStream:
    """The server side of one Watch RPC: many watchers, one bounded outgoing queue."""

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.queue: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        self.queued_events = 0
        self.watchers: dict[int, Watcher] = {}
        self.closed = False
        self.ids = itertools.count(1)

    def send(self, msg: Outgoing) -> None:
        if self.closed:
            return
        if not msg.events:  # nothing may join an event message queued before this one
            if msg.watch_id == -1:
                for w in self.watchers.values():
                    w.queued = None
            elif (one := self.watchers.get(msg.watch_id)) is not None:
                one.queued = None
        self.queued_events += len(msg.events)
        self.queue.put_nowait(msg)

    def send_events(self, w: Watcher, revision: int, events: list[Event]) -> None:
        """Queue whole revisions for `w`: appended to its queued message while that one stays
        within the message bounds, so a consumer that falls behind gets fewer, larger writes."""
        last = w.queued
        if (last is not None and len(last.events) + len(events) <= MAX_MSG_EVENTS
                and last.size + _size(events) <= MAX_MSG_BYTES and not self.closed):
            last.events.extend(events)
            last.revision = revision
            last.size += _size(events)
            self.queued_events += len(events)
            return
        msg = Outgoing(w.id, revision, events=events, size=_size(events))
        self.send(msg)
        w.queued = msg

    def taken(self, msg: Outgoing) -> None:
        if msg.events and (w := self.watchers.get(msg.watch_id)) is not None and w.queued is msg:
            w.queued = None  # on its way: nothing joins it any more
        self.queued_events -= len(msg.events)
        if self.queued_events <= self.hub._limit // 2 and not self.closed:
            for w in [w for w in self.watchers.values() if not w.synced]:
                if self.queued_events >= self.hub._limit:
                    break  # the next drain to half resumes the rest
                self.hub._catch_up(w)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for w in list(self.watchers.values()):
                self.hub.remove(w)
            self.queue.put_nowait(None)


class WatchHub:
    def __init__(
        self,
        current_revision: Callable[[], int],
        history: Callable[[int, bytes, bytes, int], list[Event]],
        *,
        buffer_limit: int,
    ) -> None:
        """`history(start, key, range_end, limit)` reads `store.events_since` under the
        node's lock (whole revisions, stopping at or past `limit` events) and raises
        `Compacted`; `current_revision()` reads the store's revision."""
        self._revision = current_revision
        self._history = history
        self._limit = buffer_limit
        self._watchers: dict[Watcher, None] = {}  # every stream's watchers (ids are per stream)
        # The last revision handed to `publish` (or caught up by `resync`): progress
        # notifications never claim a revision whose events may still be on their way.
        self._published = current_revision()

    def __len__(self) -> int:
        return len(self._watchers)

    def open_stream(self) -> WatchStream:
        return WatchStream(self)

    def create(self, stream: WatchStream, spec: WatchSpec, wid: int = 0) -> Watcher | None:
        """Register a watcher; sends `created` (and catch-up events, or the cancel)."""
        if wid == 0:
            wid = next(stream.ids)
            while wid in stream.watchers:
                wid = next(stream.ids)
        elif wid in stream.watchers:
            stream.send(
                Outgoing(wid, self._revision(), created=True, canceled=True,
                         cancel_reason=f"watch id {wid} is already in use")
            )
            return None
        w = Watcher(wid, spec, stream)
        rev = self._revision()
        stream.send(Outgoing(wid, rev, created=True))
        w.next_rev = spec.start_revision if spec.start_revision > 0 else rev + 1
        self._watchers[w] = None
        stream.watchers[wid] = w
        if w.next_rev <= rev:
            self._catch_up(w)
        return w

    def cancel(self, stream: WatchStream, wid: int, reason: str = "") -> bool:
        w = stream.watchers.get(wid)
        if w is None:
            return False
        self.remove(w)
        stream.send(Outgoing(wid, self._revision(), canceled=True, cancel_reason=reason))
        return True

    def remove(self, w: Watcher) -> None:
        self._watchers.pop(w, None)
        if w.stream.watchers.get(w.id) is w:
            del w.stream.watchers[w.id]

    def _catch_up(self, w: Watcher) -> None:
        """Send history from `w.next_rev` while the stream has room; the watcher is synced
        (gets live events) once it has everything up to the store's current revision."""
        stream = w.stream
        w.synced = False
        while True:
            room = self._limit - stream.queued_events
            if room <= 0 and stream.queued_events:
                return  # resumed by WatchStream.taken() as the stream drains
            try:
                events = self._history(w.next_rev, w.spec.key, w.spec.range_end, max(room, 1))
            except Compacted as e:
                self.remove(w)
                stream.send(
                    Outgoing(w.id, self._revision(), canceled=True,
                             compact_revision=e.compact_revision,
                             cancel_reason="required revision has been compacted")
                )
                return
            except RegistryError as e:  # e.g. a bad range: refuse this watch, keep the stream
                self.remove(w)
                stream.send(Outgoing(w.id, self._revision(), canceled=True,
                                     cancel_reason=str(e)))
                return
            if not events:
                # Synced. Not "up to the current revision": the store may have moved past the
                # history read, and those revisions' publishes are still on their way (the
                # `next_rev` check in `publish` drops what history covered).
                w.synced = True
                return
            rev = self._revision()
            i = 0
            while i < len(events):
                n = _whole_revisions(events, i, self._limit - stream.queued_events,
                                     allow_oversize=stream.queued_events == 0)
                if n == 0:
                    return  # resumed by WatchStream.taken() as the stream drains
                chunk = events[i : i + n]
                i += n
                selected = w.select(chunk)
                w.next_rev = max(w.next_rev, chunk[-1].kv.mod_revision + 1)
                if selected:
                    stream.send_events(w, rev, selected)

    def _deliver(self, w: Watcher, events: list[Event], revision: int) -> None:
        selected = w.select(events)
        queued = w.stream.queued_events
        if selected and queued and queued + len(selected) > self._limit:
            # No room: leave the live stream; WatchStream.taken() resumes from history at
            # next_rev (this revision included) once the queue has drained to half.
            w.synced = False
            return
        if events:
            w.next_rev = max(w.next_rev, events[-1].kv.mod_revision + 1)
        if selected:
            w.stream.send_events(w, revision, selected)

    # ------------------------------------------------------------------ publishers (event loop)

    def publish(self, revision: int, events: list[Event]) -> None:
        self._published = max(self._published, revision)
        for w in list(self._watchers):
            if w.synced and revision >= w.next_rev:
                self._deliver(w, events, revision)

    def resync(self) -> None:
        """After the store was replaced by a snapshot: catch every watcher up again."""
        self._published = self._revision()
        for w in list(self._watchers):
            self._catch_up(w)

    def progress(self, stream: WatchStream | None = None) -> None:
        """Progress notifications: to one stream (on request) or to watchers that asked."""
        rev = self._published
        if stream is not None:
            # Promise only what every watcher of the stream has been sent: one still catching
            # up from history has been sent everything below its next_rev and nothing more.
            behind = [w.next_rev - 1 for w in stream.watchers.values() if not w.synced]
            stream.send(Outgoing(-1, min([rev, *behind])))
            return
        for w in list(self._watchers):
            if w.spec.progress_notify and w.synced and w.next_rev > rev:
                w.stream.send(Outgoing(w.id, rev))


def _whole_revisions(events: list[Event], start: int, room: int, *, allow_oversize: bool) -> int:
    """How many events from `start` make one catch-up message: whole revisions only, within
    `room` events and the message bounds; the first revision alone if it is larger and
    `allow_oversize` (the stream is empty). 0: wait for room."""
    limit = min(room, MAX_MSG_EVENTS)
    size = 0
    n = 0  # events up to the last complete revision that fits
    j = start
    while j < len(events):
        rev = events[j].kv.mod_revision
        k = j
        while k < len(events) and events[k].kv.mod_revision == rev:
            size += _event_size(events[k])
            k += 1
        if (k - start > limit or size > MAX_MSG_BYTES) and n > 0:
            break
        if k - start > limit or size > MAX_MSG_BYTES:
            return k - start if allow_oversize else 0
        n = k - start
        j = k
    return n


def _event_size(e: Event) -> int:
    """About the encoded size of one event (what MAX_MSG_BYTES bounds)."""
    return 32 + len(e.kv.key) + len(e.kv.value) + (0 if e.prev_kv is None else
                                                    len(e.prev_kv.value))


def _size(events: list[Event]) -> int:
    return sum(map(_event_size, events))
