"""The watch hub (raftreg/server/watch_hub.py) over a real store, with no node, network or clock.

`Node` wires a `Store` and a `WatchHub` the way RegistryNode does: commands are applied to the
store, and their events are published to the hub afterwards, in apply order (possibly later:
`publish=False` holds them back, as the hand-over from the raft thread to the event loop can).
A consumer reads a stream the way the Watch servicer does (`get`, then `taken`). Everything is
synchronous or driven by explicit event-loop turns, so each property is stated exactly.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.common.keys import prefix_range_end
from raftreg.common.types import DeleteRange, Event, EventType, Put, Txn
from raftreg.server.watch_hub import (
    ALL_KEYS,
    MAX_MSG_EVENTS,
    Outgoing,
    WatchHub,
    WatchSpec,
    WatchStream,
)
from raftreg.store import Command, Compact, Failure, Request, Store

PUT, DELETE = EventType.PUT, EventType.DELETE


class Node:
    def __init__(self, buffer_limit: int = 1000) -> None:
        self.store = Store()
        self.hub = WatchHub(
            lambda: self.store.revision, self.store.events_since, buffer_limit=buffer_limit
        )
        self.unpublished: list[tuple[int, list[Event]]] = []
        self.history: list[Event] = []  # every event ever applied (kept past compactions)

    def apply(self, cmd: Command, *, publish: bool = True) -> int:
        result, events = self.store.apply(Request(cmd))
        assert not isinstance(result, Failure), result
        if events:
            self.history.extend(events)
            self.unpublished.append((result.revision, events))
        if publish:
            self.publish()
        return result.revision

    def put(self, key: bytes, value: bytes = b"v", *, publish: bool = True) -> int:
        return self.apply(Put(key, value), publish=publish)

    def delete(self, key: bytes, range_end: bytes = b"", *, publish: bool = True) -> int:
        return self.apply(DeleteRange(key, range_end), publish=publish)

    def publish(self) -> None:
        batch, self.unpublished = self.unpublished, []
        for revision, events in batch:
            self.hub.publish(revision, events)

    def expected(self, spec: WatchSpec, start: int) -> list[Event]:
        """What a watch with `spec` from revision `start` must deliver, from the full history."""
        out = []
        for e in self.history:
            if e.kv.mod_revision < start or not in_spec(spec, e):
                continue
            out.append(e if spec.prev_kv else Event(e.type, e.kv, None))
        return out


def in_spec(spec: WatchSpec, e: Event) -> bool:
    k, end = e.kv.key, spec.range_end
    if not end:
        selected = k == spec.key
    elif end == ALL_KEYS:
        selected = k >= spec.key
    else:
        selected = spec.key <= k < end
    return selected and not (
        (spec.no_put and e.type == PUT) or (spec.no_delete and e.type == DELETE)
    )


def take(stream: WatchStream) -> list[Outgoing]:
    """Read everything the stream has queued now, as the Watch servicer does (get, taken)."""
    out = []
    while not stream.queue.empty():
        msg = stream.queue.get_nowait()
        if msg is None:
            break
        stream.taken(msg)  # may resume a paced catch-up, which queues more
        out.append(msg)
    return out


def events_of(msgs: list[Outgoing], wid: int) -> list[Event]:
    """The events sent to watch `wid`, checking that every revision came whole, in one
    message, in increasing order, and nothing came after its cancel."""
    seen: set[int] = set()
    last = 0
    out: list[Event] = []
    canceled = False
    for m in msgs:
        if m.watch_id != wid:
            continue
        assert not canceled, f"message after the cancel of watch {wid}: {m}"
        canceled = m.canceled
        revs = [e.kv.mod_revision for e in m.events]
        assert revs == sorted(revs), f"out of order within a message: {revs}"
        for r in dict.fromkeys(revs):
            assert r not in seen, f"revision {r} split across messages or sent twice"
            assert r > last, f"revision {r} after {last}"
            seen.add(r)
            last = r
        out.extend(m.events)
    return out


def cancel_of(msgs: list[Outgoing], wid: int) -> Outgoing | None:
    return next((m for m in msgs if m.watch_id == wid and m.canceled), None)


def watch(node: Node, stream: WatchStream, spec: WatchSpec) -> int:
    w = node.hub.create(stream, spec)
    assert w is not None
    return w.id


# ---------------------------------------------------------------------------------------------
# whole revisions, in order, no gaps, no duplicates


def test_live_events_arrive_as_whole_revisions_in_order() -> None:
    node = Node()
    s = node.hub.open_stream()
    spec = WatchSpec(b"a/", prefix_range_end(b"a/"))
    wid = watch(node, s, spec)
    start = node.store.revision + 1
    node.put(b"a/1")
    node.put(b"b/1")  # outside the watch
    node.apply(Txn(success=tuple(Put(b"a/%d" % i, b"t") for i in range(2, 12))))
    node.put(b"a/1", b"again")
    node.delete(b"a/", prefix_range_end(b"a/"))  # one revision, many deletes
    msgs = take(s)
    assert msgs[0].created and msgs[0].watch_id == wid
    got = events_of(msgs, wid)
    assert got == node.expected(spec, start)
    assert [len(m.events) for m in msgs[1:]] == [23], "queued revisions join one message"
    for m in msgs[1:]:
        assert m.revision == max(e.kv.mod_revision for e in m.events)
    assert all(e.prev_kv is None for e in got), "prev_kv only on request"


def test_revisions_join_a_queued_message_only_until_it_is_taken_or_a_notice_follows() -> None:
    node = Node()
    s = node.hub.open_stream()
    spec = WatchSpec(b"a/", prefix_range_end(b"a/"))
    a = watch(node, s, spec)
    b = watch(node, s, spec)
    take(s)
    start = node.store.revision + 1
    node.put(b"a/1")
    node.put(b"a/2")  # joins each watcher's queued message
    assert [(m.watch_id, len(m.events)) for m in take(s)] == [(a, 2), (b, 2)]
    node.put(b"a/3")  # the previous messages were taken: new ones
    node.hub.progress(s)  # a stream-wide notice: nothing may join what was queued before it
    node.put(b"a/4")
    msgs = take(s)
    assert [(m.watch_id, len(m.events)) for m in msgs] == [(a, 1), (b, 1), (-1, 0), (a, 1),
                                                             (b, 1)]
    assert msgs[2].revision == start + 2
    for w in (a, b):
        assert events_of(msgs, w) == node.expected(spec, start)[2:]


def test_catch_up_then_live_is_exactly_once_even_when_publishing_lags() -> None:
    """Catch-up reads the store's history, which can already hold events not yet published;
    when they are published the watcher must not get them twice, nor lose the later ones."""
    node = Node()
    for i in range(30):
        node.put(b"k/%02d" % i)
    first = 2
    for i in range(30, 40):  # applied, not yet handed to the hub
        node.put(b"k/%02d" % i, publish=False)
    s = node.hub.open_stream()
    spec = WatchSpec(b"k/", prefix_range_end(b"k/"), start_revision=first)
    wid = watch(node, s, spec)
    node.publish()
    for i in range(40, 50):  # live
        node.put(b"k/%02d" % i)
    got = events_of(take(s), wid)
    assert got == node.expected(spec, first)
    assert [e.kv.mod_revision for e in got] == list(range(first, first + 50))


def test_start_at_current_revision_plus_one_sees_only_later_events() -> None:
    node = Node()
    node.put(b"k")
    s = node.hub.open_stream()
    wid = watch(node, s, WatchSpec(b"k"))
    r = node.put(b"k", b"2")
    (e,) = events_of(take(s), wid)
    assert (e.type, e.kv.mod_revision, e.kv.value) == (PUT, r, b"2")


def test_catch_up_longer_than_the_buffer_is_paced_not_cancelled() -> None:
    limit = 50
    node = Node(buffer_limit=limit)
    for i in range(7 * limit):
        node.put(b"p/%04d" % i)
    s = node.hub.open_stream()
    spec = WatchSpec(b"p/", prefix_range_end(b"p/"), start_revision=1)
    w = node.hub.create(s, spec)
    assert w is not None
    assert s.queued_events <= limit and not w.synced, "history beyond the buffer waits"
    msgs: list[Outgoing] = []
    live: list[int] = []
    for i in range(20):  # the consumer reads while writes keep coming
        live.append(node.put(b"p/live/%d" % i))
        msgs += take(s)
    msgs += take(s)
    assert cancel_of(msgs, w.id) is None
    assert w.synced
    assert events_of(msgs, w.id) == node.expected(spec, 1)
    assert max(len(m.events) for m in msgs) <= limit


def test_one_revision_larger_than_a_message_is_still_sent_whole() -> None:
    node = Node(buffer_limit=10 * MAX_MSG_EVENTS)
    n = MAX_MSG_EVENTS + 5
    for i in range(n):
        last_put = node.put(b"t/%05d" % i)
    big = node.delete(b"t/", prefix_range_end(b"t/"))  # one revision of n events
    s = node.hub.open_stream()
    spec = WatchSpec(b"t/", prefix_range_end(b"t/"), start_revision=last_put)
    wid = watch(node, s, spec)
    msgs = take(s)
    assert events_of(msgs, wid) == node.expected(spec, last_put)
    assert [len(m.events) for m in msgs if m.events] == [1, n]
    assert {e.kv.mod_revision for e in msgs[-1].events} == {big}


# ---------------------------------------------------------------------------------------------
# filters and prev_kv


def test_filters_and_prev_kv() -> None:
    node = Node()
    s = node.hub.open_stream()
    specs = {
        "plain": WatchSpec(b"f/k"),
        "prev": WatchSpec(b"f/k", prev_kv=True),
        "no_put": WatchSpec(b"f/k", no_put=True),
        "no_delete": WatchSpec(b"f/k", no_delete=True),
        "range": WatchSpec(b"f/b", b"f/d"),
        "from": WatchSpec(b"f/c", ALL_KEYS),
    }
    ids = {name: watch(node, s, spec) for name, spec in specs.items()}
    start = node.store.revision + 1
    r1 = node.put(b"f/k", b"one")
    r2 = node.put(b"f/k", b"two")
    r3 = node.delete(b"f/k")
    for k in (b"f/a", b"f/b", b"f/c", b"f/d", b"g"):
        node.put(k)
    msgs = take(s)
    got = {name: events_of(msgs, wid) for name, wid in ids.items()}
    for name, spec in specs.items():
        assert got[name] == node.expected(spec, start), name
    assert [(e.type, e.kv.mod_revision) for e in got["plain"]] == [
        (PUT, r1), (PUT, r2), (DELETE, r3)]
    assert all(e.prev_kv is None for e in got["plain"])
    assert [e.prev_kv.value if e.prev_kv else None for e in got["prev"]] == [
        None, b"one", b"two"]
    assert [(e.type, e.kv.mod_revision) for e in got["no_put"]] == [(DELETE, r3)]
    assert [(e.type, e.kv.mod_revision) for e in got["no_delete"]] == [(PUT, r1), (PUT, r2)]
    assert [e.kv.key for e in got["range"]] == [b"f/b", b"f/c"]
    assert [e.kv.key for e in got["from"]] == [b"f/k", b"f/k", b"f/k", b"f/c", b"f/d", b"g"]


def test_prev_kv_and_filters_apply_to_catch_up_too() -> None:
    node = Node()
    node.put(b"h/k", b"one")
    node.put(b"h/k", b"two")
    node.delete(b"h/k")
    s = node.hub.open_stream()
    prev = watch(node, s, WatchSpec(b"h/k", prev_kv=True, start_revision=1))
    no_put = watch(node, s, WatchSpec(b"h/k", no_put=True, start_revision=1))
    msgs = take(s)
    assert [e.prev_kv.value if e.prev_kv else None for e in events_of(msgs, prev)] == [
        None, b"one", b"two"]
    assert [e.type for e in events_of(msgs, no_put)] == [DELETE]


# ---------------------------------------------------------------------------------------------
# compaction


def test_start_below_compaction_is_cancelled_with_the_compact_revision() -> None:
    node = Node()
    first = node.put(b"c/k", b"1")
    node.put(b"c/k", b"2")
    last = node.put(b"c/k", b"3")
    node.apply(Compact(last))
    s = node.hub.open_stream()
    w = node.hub.create(s, WatchSpec(b"c/k", start_revision=first))
    assert w is not None
    created, cancel = take(s)
    assert created.created and not created.canceled
    assert cancel.canceled and cancel.watch_id == w.id
    assert cancel.compact_revision == last
    assert "compacted" in cancel.cancel_reason
    assert len(node.hub) == 0
    node.put(b"c/k", b"4")
    assert take(s) == [], "nothing after the cancel"
    # At the compaction point itself the watch works.
    spec = WatchSpec(b"c/k", start_revision=last)
    wid = watch(node, s, spec)
    assert events_of(take(s), wid) == node.expected(spec, last)


def test_compaction_during_a_paced_catch_up_cancels_with_the_compact_revision() -> None:
    node = Node(buffer_limit=20)
    for i in range(100):
        node.put(b"c/%03d" % i)
    s = node.hub.open_stream()
    w = node.hub.create(s, WatchSpec(b"c/", prefix_range_end(b"c/"), start_revision=1))
    assert w is not None and not w.synced
    compact_at = node.store.revision - 5
    node.apply(Compact(compact_at))
    msgs = take(s)
    cancel = cancel_of(msgs, w.id)
    assert cancel is not None and cancel.compact_revision == compact_at
    got = events_of(msgs, w.id)
    assert got == node.expected(w.spec, 1)[: len(got)], "a whole-revision prefix, then cancel"
    assert got[-1].kv.mod_revision < compact_at


# ---------------------------------------------------------------------------------------------
# slow watchers: buffered up to the limit, then caught up from history; never cancelled, never
# blocking the publisher


def test_publish_is_synchronous() -> None:
    """The publisher cannot wait for a consumer: publish is a plain call, not a coroutine,
    and a stream's queue is unbounded (so put_nowait never raises QueueFull)."""
    assert not inspect.iscoroutinefunction(WatchHub.publish)
    node = Node()
    assert node.hub.open_stream().queue.maxsize == 0


def test_slow_watcher_is_buffered_up_to_the_limit_then_catches_up_from_history() -> None:
    limit = 100
    node = Node(buffer_limit=limit)
    slow_stream = node.hub.open_stream()  # nobody reads it for now
    spec = WatchSpec(b"s/", prefix_range_end(b"s/"))
    slow = watch(node, slow_stream, spec)
    start = node.store.revision + 1
    for i in range(limit):
        node.put(b"s/%d" % i)
    assert slow_stream.queued_events == limit, "buffered, not dropped"
    node.put(b"s/overflow")  # one event more than the buffer holds
    for i in range(1000):  # later events are not queued either
        node.put(b"s/more/%d" % i)
    assert slow_stream.queued_events == limit
    assert len(node.hub) == 1 and list(slow_stream.watchers) == [slow], "not cancelled"
    msgs = take(slow_stream)  # the consumer reads again: history fills the gap, in order
    assert cancel_of(msgs, slow) is None
    assert events_of(msgs, slow) == node.expected(spec, start)
    assert slow_stream.watchers[slow].synced, "back on the live stream"
    r = node.put(b"s/live")
    assert [e.kv.mod_revision for e in events_of(take(slow_stream), slow)] == [r]


def test_catch_up_reads_history_in_proportion_to_what_it_sends() -> None:
    """Many watchers far behind on one stream: history is read only while the stream has room,
    and no more than fits, however many watchers wait (before, every drain made every waiting
    watcher read all of its history again: here 8,020,000 events read to send 40,000)."""
    limit, watchers, behind = 100, 20, 2000
    node = Node(buffer_limit=limit)
    stream = node.hub.open_stream()
    spec = WatchSpec(b"s/", prefix_range_end(b"s/"))
    start = node.store.revision + 1
    for i in range(behind):
        node.put(b"s/%d" % i)
    read = 0
    events_since = node.store.events_since

    def counted(*args: object) -> list[Event]:
        nonlocal read
        out = events_since(*args)  # type: ignore[arg-type]
        read += len(out)
        return out

    node.hub._history = counted  # type: ignore[method-assign]
    ids = [watch(node, stream, replace(spec, start_revision=start)) for _ in range(watchers)]
    msgs = take(stream)
    for wid in ids:
        assert events_of(msgs, wid) == node.expected(spec, start)
    sent = watchers * behind
    assert read <= 2 * sent, f"read {read} events from history to send {sent}"


def test_a_slow_watcher_behind_a_compaction_is_cancelled_with_the_compact_revision() -> None:
    limit = 10
    node = Node(buffer_limit=limit)
    s = node.hub.open_stream()
    spec = WatchSpec(b"s/", prefix_range_end(b"s/"))
    slow = watch(node, s, spec)
    for i in range(3 * limit):
        node.put(b"s/%d" % i)
    compact_at = node.store.revision
    node.apply(Compact(compact_at))
    msgs = take(s)
    cancel = cancel_of(msgs, slow)
    assert cancel is not None and cancel.compact_revision == compact_at
    got = events_of(msgs, slow)
    assert len(got) == limit and got == node.expected(spec, 1)[:limit]


async def test_stuck_consumer_never_blocks_the_publisher_nor_other_watchers() -> None:
    """As on a node, each publish runs in its own event-loop turn: a consumer that keeps
    reading gets everything at once, one that stopped reading holds at most `limit` queued
    events and gets the rest when it reads again, and the publisher never waits for either
    (it only yields the loop between writes)."""
    limit, n = 100, 2000
    node = Node(buffer_limit=limit)
    spec = WatchSpec(b"s/", prefix_range_end(b"s/"))
    slow_stream, fast_stream = node.hub.open_stream(), node.hub.open_stream()
    slow, fast = watch(node, slow_stream, spec), watch(node, fast_stream, spec)
    start = node.store.revision + 1
    stuck = asyncio.Event()  # set only at the end
    fast_msgs: list[Outgoing] = []

    async def stuck_consumer() -> None:
        msg = await slow_stream.queue.get()  # reads the `created` message, then hangs
        assert msg is not None
        slow_stream.taken(msg)
        await stuck.wait()

    async def fast_consumer() -> None:
        while (msg := await fast_stream.queue.get()) is not None:
            fast_stream.taken(msg)
            fast_msgs.append(msg)

    async def publisher() -> int:
        turns = 0
        for i in range(n):
            node.put(b"s/%d" % i)
            await asyncio.sleep(0)  # one loop turn, whatever the consumers do
            assert slow_stream.queued_events <= limit
            turns += 1
        return turns

    consumers = [asyncio.create_task(stuck_consumer()), asyncio.create_task(fast_consumer())]
    await asyncio.sleep(0)  # both consumers are now waiting on their queues
    assert await publisher() == n
    assert not consumers[0].done(), "the stuck consumer is still stuck"
    assert len(node.hub) == 2
    await asyncio.sleep(0)
    assert events_of(fast_msgs, fast) == node.expected(spec, start)
    assert cancel_of(fast_msgs, fast) is None
    slow_msgs = take(slow_stream)
    assert cancel_of(slow_msgs, slow) is None
    assert events_of(slow_msgs, slow) == node.expected(spec, start)
    fast_stream.close()
    slow_stream.close()
    stuck.set()
    await asyncio.gather(*consumers)


def test_publisher_with_no_consumer_running_at_all_completes() -> None:
    """Even when no consumer can run (n publishes in one go, no await), publishing returns
    and each queue stays bounded; every watcher gets everything once its stream is read."""
    limit, n = 50, 5000
    node = Node(buffer_limit=limit)
    spec = WatchSpec(b"s/", prefix_range_end(b"s/"))
    streams = [node.hub.open_stream() for _ in range(10)]
    ids = [watch(node, s, spec) for s in streams]
    start = node.store.revision + 1
    for i in range(n):
        node.put(b"s/%d" % i)
    assert len(node.hub) == 10
    assert all(s.queued_events == limit and s.queue.qsize() == 2 for s in streams)
    for s, wid in zip(streams, ids, strict=True):
        assert events_of(take(s), wid) == node.expected(spec, start)


def test_slow_watcher_on_a_stream_does_not_hold_back_a_quiet_one_on_the_same_stream() -> None:
    limit = 10
    node = Node(buffer_limit=limit)
    s = node.hub.open_stream()
    busy = watch(node, s, WatchSpec(b"busy/", prefix_range_end(b"busy/")))
    quiet = watch(node, s, WatchSpec(b"quiet"))
    for i in range(limit + 1):
        node.put(b"busy/%d" % i)
    assert not s.watchers[busy].synced and s.watchers[quiet].synced
    r = node.put(b"quiet")  # one event: it still fits (a revision is sent whole)
    msgs = take(s)
    assert [e.kv.mod_revision for e in events_of(msgs, quiet)] == [r]
    assert len(events_of(msgs, busy)) == limit + 1 and cancel_of(msgs, busy) is None


# ---------------------------------------------------------------------------------------------
# cancel, close, progress, resync


def test_cancel_stops_delivery_and_close_removes_every_watcher() -> None:
    node = Node()
    s = node.hub.open_stream()
    a = watch(node, s, WatchSpec(b"x"))
    b = watch(node, s, WatchSpec(b"x"))
    node.put(b"x")
    assert node.hub.cancel(s, a, "bye")
    assert not node.hub.cancel(s, a)
    r = node.put(b"x")
    msgs = take(s)
    assert [m.cancel_reason for m in msgs if m.canceled] == ["bye"]
    assert len(events_of(msgs, a)) == 1
    assert [e.kv.mod_revision for e in events_of(msgs, b)] == [r - 1, r]
    s.close()
    assert len(node.hub) == 0
    node.put(b"x")
    assert s.queue.get_nowait() is None and s.queue.empty()


def test_duplicate_watch_id_on_a_stream_is_refused() -> None:
    node = Node()
    s, t = node.hub.open_stream(), node.hub.open_stream()
    assert node.hub.create(s, WatchSpec(b"x"), wid=7) is not None
    assert node.hub.create(t, WatchSpec(b"x"), wid=7) is not None, "ids are per stream"
    assert node.hub.create(s, WatchSpec(b"x"), wid=7) is None
    dup = take(s)[-1]
    assert dup.canceled and dup.watch_id == 7 and "in use" in dup.cancel_reason
    assert len(node.hub) == 2


def test_progress_never_claims_an_unpublished_revision() -> None:
    node = Node()
    s = node.hub.open_stream()
    watch(node, s, WatchSpec(b"pg", progress_notify=True))
    published = node.put(b"other")
    node.put(b"pg", publish=False)  # applied, its events still on their way
    take(s)
    node.hub.progress(s)
    node.hub.progress()
    assert [(m.watch_id, m.revision) for m in take(s)] == [(-1, published), (1, published)]
    node.publish()
    take(s)
    node.hub.progress()
    (m,) = take(s)
    assert (m.revision, m.events) == (node.store.revision, [])


def test_progress_of_a_stream_waits_for_a_watcher_still_catching_up() -> None:
    node = Node(buffer_limit=10)
    for i in range(50):
        node.put(b"q/%d" % i)
    s = node.hub.open_stream()
    w = node.hub.create(s, WatchSpec(b"q/", prefix_range_end(b"q/"), start_revision=1))
    assert w is not None and not w.synced
    node.hub.progress(s)
    progress = [m for m in drain_raw(s) if m is not None and m.watch_id == -1]
    assert progress and progress[0].revision == w.next_rev - 1 < node.store.revision


def drain_raw(stream: WatchStream) -> list[Outgoing | None]:
    """What is queued now, without marking it taken (no catch-up resumes)."""
    out: list[Outgoing | None] = []
    while not stream.queue.empty():
        out.append(stream.queue.get_nowait())
    return out


def test_resync_after_a_snapshot_install_fills_the_hole() -> None:
    node = Node()
    s = node.hub.open_stream()
    spec = WatchSpec(b"r/", prefix_range_end(b"r/"))
    wid = watch(node, s, spec)
    start = node.store.revision + 1
    node.put(b"r/1")
    # Another replica moved on; this node installs its snapshot: no events for the hole.
    other = Store()
    other.restore(node.store.snapshot())
    for i in range(2, 6):
        other.apply(Request(Put(b"r/%d" % i, b"v")))
    other.apply(Request(DeleteRange(b"r/1")))
    node.store.restore(other.snapshot())
    node.history = other.events_since(1, b"", ALL_KEYS)
    node.hub.resync()
    node.put(b"r/live")
    assert events_of(take(s), wid) == node.expected(spec, start)


# ---------------------------------------------------------------------------------------------
# everything at once, over random schedules


KEYS = [b"k/a", b"k/b", b"k/c", b"l/a"]
SPECS = [
    WatchSpec(b"k/a"),
    WatchSpec(b"k/", prefix_range_end(b"k/")),
    WatchSpec(b"k/a", b"k/c", prev_kv=True),
    WatchSpec(b"k/", ALL_KEYS, no_put=True),
    WatchSpec(b"k/", ALL_KEYS, no_delete=True, prev_kv=True),
]

ops = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("delete"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("txn"), st.integers(1, 4), st.booleans()),
    st.tuples(st.just("publish"), st.just(0), st.just(True)),
    st.tuples(st.just("watch"), st.integers(0, 4 * len(SPECS) - 1), st.booleans()),
    st.tuples(st.just("read"), st.integers(0, 1), st.just(True)),
    st.tuples(st.just("compact"), st.integers(0, 6), st.just(True)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(ops, min_size=1, max_size=80), st.integers(3, 12))
def test_every_watcher_gets_exactly_its_history(
    schedule: list[tuple[str, int, bool]], limit: int
) -> None:
    """Random writes (some published late), watches from random past revisions, readers that
    read now and then, compactions: in the end every watcher got exactly the history of its
    keys from its start, in whole revisions, or a whole-revision prefix of it and a cancel
    (slow, or compacted while catching up)."""
    node = Node(buffer_limit=limit)
    streams = [node.hub.open_stream(), node.hub.open_stream()]
    msgs: list[list[Outgoing]] = [[], []]
    watches: list[tuple[int, int, WatchSpec, int]] = []  # stream, id, spec, start
    values = itertools.count()
    for op, arg, flag in schedule:
        if op == "put":
            node.put(KEYS[arg], b"%d" % next(values), publish=flag)
        elif op == "delete":  # (of a missing key: no revision, no events)
            node.apply(DeleteRange(KEYS[arg]), publish=flag)
        elif op == "txn":
            node.apply(Txn(success=tuple(Put(k, b"%d" % next(values)) for k in KEYS[:arg])),
                       publish=flag)
        elif op == "publish":
            node.publish()
        elif op == "watch":
            spec_i, back = divmod(arg, 4)
            j = int(flag)
            rev = node.store.revision
            start = max(1, rev + 1 - 3 * back)
            spec = replace(SPECS[spec_i], start_revision=start)
            w = node.hub.create(streams[j], spec)
            assert w is not None
            watches.append((j, w.id, spec, start))
        elif op == "read":
            msgs[arg] += take(streams[arg])
        elif op == "compact":
            target = node.store.revision - arg
            if target > node.store.compact_revision:
                node.apply(Compact(target))
    node.publish()
    for _ in range(1000):  # read until nothing more comes (paced catch-ups resume on read)
        more = [take(s) for s in streams]
        if not any(more):
            break
        for j, m in enumerate(more):
            msgs[j] += m
    for j, wid, spec, start in watches:
        got = events_of(msgs[j], wid)
        want = node.expected(spec, start)
        cancel = cancel_of(msgs[j], wid)
        if cancel is None:
            assert got == want, (wid, spec)
            continue
        assert got == want[: len(got)], "a prefix of the history"
        if got and len(got) < len(want):
            assert want[len(got)].kv.mod_revision > got[-1].kv.mod_revision, "whole revisions"
        if cancel.compact_revision:
            assert start < cancel.compact_revision
        else:
            assert "slow" in cancel.cancel_reason, cancel

