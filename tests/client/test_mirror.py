"""`PrefixMirror` over the in-memory client on its manual clock: the snapshot then each batch
once and in order, re-list on compaction and on a failed watch, backoff and staleness while
the registry is away, progress requests, lifecycle. No test waits on wall-clock time: the
loop only runs the mirror's tasks (`until`), and time moves by `advance()`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.client.mirror import PrefixMirror
from raftreg.common.backoff import Backoff
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.errors import FailedPrecondition, Unavailable

pytestmark = pytest.mark.timeout(10)

LOG = "raftreg.client.mirror"


class Copy:
    """A caller's copy of the prefix: the calls the mirror made, and the state they built."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[tuple[str, bytes], ...]]] = []
        self.state: dict[bytes, bytes] = {}
        self.fail_with: Exception | None = None

    async def on_snapshot(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(("snapshot", revision, tuple(("PUT", kv.key) for kv in kvs)))
        self.state = {kv.key: kv.value for kv in kvs}

    async def on_events(self, events: tuple[Event, ...], revision: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(("events", revision, tuple((e.type.name, e.kv.key) for e in events)))
        for e in events:
            if e.type == EventType.DELETE:
                self.state.pop(e.kv.key, None)
            else:
                self.state[e.kv.key] = e.kv.value


@pytest.fixture
async def mem() -> AsyncIterator[MemoryRegistryClient]:
    c = MemoryRegistryClient(seed=3)
    yield c
    await c.close()


def mirror_of(
    mem: MemoryRegistryClient, copy: Copy, *, progress_interval: float | None = None
) -> PrefixMirror:
    return PrefixMirror(
        mem, "/p/", on_snapshot=copy.on_snapshot, on_events=copy.on_events,
        backoff=Backoff(base=1.0, max_delay=4.0, jitter="none"),
        progress_interval=progress_interval, clock=mem.clock,
    )


async def until(cond: Callable[[], bool]) -> None:
    """Let the loop run (no time passes) until `cond` holds."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def idle() -> None:
    """Let the loop run everything that is ready (no time passes)."""
    for _ in range(100):
        await asyncio.sleep(0)


async def store_state(mem: MemoryRegistryClient) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await mem.get("/p/", prefix=True)).kvs}


async def test_the_snapshot_then_every_batch_once_in_revision_order(
    mem: MemoryRegistryClient,
) -> None:
    r1 = (await mem.put("/p/a", "1")).revision
    await mem.put("/q/x", "other prefix")
    copy = Copy()
    m = mirror_of(mem, copy)
    await m.list_and_start()
    listed = r1 + 1
    assert copy.calls == [("snapshot", listed, (("PUT", b"/p/a"),))]
    assert m.synced and m.running and m.revision == listed and m.stale_for() == 0
    r2 = (await mem.put("/p/b", "2")).revision
    await mem.put("/q/y", "other prefix")
    r3 = (await mem.delete("/p/", prefix=True)).revision  # two events, one revision
    r4 = (await mem.put("/p/c", "3")).revision
    await until(lambda: len(copy.calls) == 4)
    await idle()
    assert copy.calls[1:] == [
        ("events", r2, (("PUT", b"/p/b"),)),
        ("events", r3, (("DELETE", b"/p/a"), ("DELETE", b"/p/b"))),
        ("events", r4, (("PUT", b"/p/c"),)),
    ]
    assert copy.state == await store_state(mem) and m.revision == r4
    await m.close()


async def test_a_compacted_watch_relists_with_a_full_snapshot(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    await mem.put("/p/a", "1")
    await mem.put("/p/b", "2")
    copy = Copy()
    m = mirror_of(mem, copy)
    await m.list_and_start()
    # The watch falls behind (cut off from the store's event feed), misses a delete and a put,
    # and its resume point is compacted away: only a fresh list brings the copy back.
    (w,) = mem._watches.values()
    mem._watches = {}
    await mem.delete("/p/a")
    rev = (await mem.put("/p/c", "3")).revision
    await mem.compact(rev)
    w._on_compacted(rev, rev)
    await until(lambda: len(copy.calls) == 2)
    assert copy.calls[1] == ("snapshot", rev, (("PUT", b"/p/b"), ("PUT", b"/p/c")))
    assert copy.state == await store_state(mem) and m.revision == rev
    assert f"/p/: watch compacted at {rev}; re-listing" in caplog.text
    later = (await mem.put("/p/d", "4")).revision  # followed by the new watch
    await until(lambda: len(copy.calls) == 3)
    assert copy.calls[2] == ("events", later, (("PUT", b"/p/d"),))
    assert mem.watch_count == 1
    await m.close()


async def test_failed_lists_are_retried_with_backoff_on_the_clock(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOG)

    def retries() -> list[str]:
        return [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records
                if "list failed" in r.getMessage()]

    async def tried(times: int) -> None:
        await until(lambda: len(retries()) == times)

    rev = (await mem.put("/p/a", "1")).revision
    mem.set_unavailable()
    copy = Copy()
    m = mirror_of(mem, copy)
    m.start()
    await tried(1)
    for n, delay in enumerate((1.0, 2.0, 4.0), start=1):
        mem.advance(delay - 0.5)
        await idle()
        assert len(retries()) == n  # not before its delay is over
        mem.advance(0.5)
        await tried(n + 1)
    assert retries() == ["1.00s", "2.00s", "4.00s", "4.00s"]
    assert not m.synced and copy.calls == [] and m.stale_for() == float("inf")
    mem.set_unavailable(False)
    mem.advance(4.0)
    await asyncio.wait_for(m.wait_synced(), 5)
    assert copy.calls == [("snapshot", rev, (("PUT", b"/p/a"),))] and m.stale_for() == 0
    await m.close()


async def test_while_the_registry_is_away_the_copy_stays_and_staleness_grows(
    mem: MemoryRegistryClient,
) -> None:
    await mem.put("/p/a", "1")
    copy = Copy()
    m = mirror_of(mem, copy, progress_interval=1.0)
    await m.list_and_start()
    await until(lambda: mem.clock.sleepers == 1)  # the progress interval has begun
    rev = m.revision
    mem.advance(1.0)  # nothing heard for an interval: a progress request answers
    await until(lambda: m.stale_for() == 0)
    mem.set_unavailable()
    for t in (1.0, 2.0, 3.0):
        mem.advance(1.0)  # progress requests fail now
        await idle()
        assert m.stale_for() == t
    assert copy.calls == [("snapshot", rev, (("PUT", b"/p/a"),))] and m.revision == rev
    assert copy.state == {b"/p/a": b"1"}
    mem.set_unavailable(False)
    mem.advance(1.0)
    await until(lambda: m.stale_for() == 0)
    later = (await mem.put("/p/b", "2")).revision
    await until(lambda: len(copy.calls) == 2)
    assert copy.calls[1] == ("events", later, (("PUT", b"/p/b"),))
    assert copy.state == await store_state(mem) and m.revision == later
    await m.close()


async def test_a_failed_watch_relists_after_a_pause_and_backoff_while_away(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOG)
    await mem.put("/p/a", "1")
    copy = Copy()
    m = mirror_of(mem, copy)
    await m.list_and_start()
    (w,) = mem._watches.values()
    mem._watches = {}  # the change below is missed by the watch: only a re-list sees it
    changed = (await mem.put("/p/a", "2")).revision
    mem.set_unavailable()
    w._on_failed(Unavailable("stream broken for good"))
    await until(lambda: "/p/: watch failed (stream broken for good); re-listing" in caplog.text)
    await idle()
    assert "re-list failed" not in caplog.text  # the pause (backoff.base) comes first
    mem.advance(1.0)
    await until(lambda: "re-list failed (memory registry is unavailable); retrying in 1.00s"
                in caplog.text)
    assert copy.state == {b"/p/a": b"1"} and len(copy.calls) == 1  # kept while away
    mem.set_unavailable(False)
    mem.advance(1.0)
    await until(lambda: len(copy.calls) == 2)
    assert copy.calls[1] == ("snapshot", changed, (("PUT", b"/p/a"),))
    assert copy.state == {b"/p/a": b"2"} and m.revision == changed
    later = (await mem.put("/p/b", "3")).revision
    await until(lambda: len(copy.calls) == 3)
    assert copy.calls[2] == ("events", later, (("PUT", b"/p/b"),))
    await m.close()


async def test_progress_is_asked_for_only_after_an_interval_of_silence(
    mem: MemoryRegistryClient,
) -> None:
    asked = 0
    ask = mem.request_progress

    async def counting() -> None:
        nonlocal asked
        asked += 1
        await ask()

    mem.request_progress = counting  # type: ignore[method-assign]
    copy = Copy()
    m = mirror_of(mem, copy, progress_interval=1.0)
    await m.list_and_start()  # heard at 0
    await until(lambda: mem.clock.sleepers == 1)  # the progress interval has begun
    mem.advance(0.5)
    await mem.put("/p/a", "1")  # heard at 0.5
    await until(lambda: len(copy.calls) == 2)
    mem.advance(0.5)  # t=1: heard 0.5s ago, no request
    await idle()
    assert asked == 0 and m.stale_for() == 0.5
    other = (await mem.put("/q/x", "1")).revision  # not ours: the mirror hears nothing
    mem.advance(1.0)  # t=2: silent for 1.5s, a request; its answer moves the revision on
    await until(lambda: m.stale_for() == 0)
    assert asked == 1 and m.revision == other and len(copy.calls) == 2
    await m.close()


async def test_list_and_start_raises_and_leaves_nothing_running(
    mem: MemoryRegistryClient,
) -> None:
    copy = Copy()
    m = mirror_of(mem, copy, progress_interval=1.0)
    mem.set_unavailable()
    with pytest.raises(Unavailable):
        await m.list_and_start()
    mem.set_unavailable(False)
    copy.fail_with = ValueError("a bad snapshot")
    with pytest.raises(ValueError, match="a bad snapshot"):
        await m.list_and_start()
    assert not m.started and not m.running and not m.synced
    assert mem.watch_count == 0 and mem.clock.sleepers == 0
    copy.fail_with = None
    await m.list_and_start()  # may try again
    assert m.running and m.synced and mem.watch_count == 1
    with pytest.raises(FailedPrecondition):
        await m.list_and_start()
    with pytest.raises(FailedPrecondition):
        m.start()
    await m.close()


async def test_close_cancels_the_watch_and_a_closed_client_ends_the_mirror(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOG)
    copy = Copy()
    m = mirror_of(mem, copy, progress_interval=1.0)
    await m.list_and_start()
    await until(lambda: mem.clock.sleepers == 1)  # the progress interval has begun
    assert mem.watch_count == 1
    await m.close()
    await m.close()
    assert not m.running and mem.watch_count == 0 and mem.clock.sleepers == 0
    with pytest.raises(FailedPrecondition):
        m.start()

    m2 = mirror_of(mem, Copy(), progress_interval=1.0)
    m2.start()
    await asyncio.wait_for(m2.wait_synced(), 5)
    await mem.close()
    await until(lambda: not m2.running)
    assert "/p/: stopped (client is closed)" in caplog.text
    await idle()
    assert mem.clock.sleepers == 0  # no more progress requests either
    await m2.close()


async def test_an_error_in_a_callback_ends_the_mirror_with_a_log_line(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOG)
    copy = Copy()
    m = mirror_of(mem, copy)
    await m.list_and_start()
    copy.fail_with = RuntimeError("a bug")
    await mem.put("/p/a", "1")
    await until(lambda: not m.running)
    assert "/p/: stopped by an unexpected error" in caplog.text and "a bug" in caplog.text
    assert mem.watch_count == 0
    await m.close()
