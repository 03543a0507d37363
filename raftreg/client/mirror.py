"""`PrefixMirror`: one key prefix of the registry followed by list-then-watch, for callers
that keep a local copy of it (the discovery `Resolver`, the config center's `ConfigWatcher`).

It owns the loop those copies need (etcd's `mirror.Syncer`, Kubernetes' reflector); the
caller owns what the keys mean and gets two async callbacks:
- `on_snapshot(kvs, revision)`: the full state of the prefix at `revision`, from a
  linearizable list; the caller replaces its copy. Called on the first list and on every
  re-list.
- `on_events(events, revision)`: one watch batch (one or more whole revisions, in order);
  `revision` is the header revision (>= the last event's).

Guarantees:
- Each list is followed by a watch from its revision + 1 (`RegistryClient.list_then_watch`),
  and the client's `Watch` resumes without gap across failovers; so the callbacks see every
  change once, in revision order, and the copy they keep is the prefix as of `revision`. The
  callbacks are awaited one at a time, never overlapping, on the event loop.
- A compacted watch re-lists at once; a failed watch re-lists after a pause of
  `backoff.base`. A failed list is retried after `backoff.delay(1)`, `delay(2)`, ... (the
  count starts again after a list that succeeded); the caller's copy is left as it was
  meanwhile. `ClientClosed` from the list (the client was closed) ends the mirror
  with one warning line. An exception from a callback after the start ends the mirror too,
  logged with its traceback.
- `revision` is the newest revision the copy is known to reflect: the list's, then each
  batch's header revision (progress answers included). `stale_for()` is the time since the
  mirror last heard from the registry (a list, a batch or a progress answer), inf before the
  first list. With `progress_interval`, the watch asks for progress notifications and the
  mirror calls `request_progress()` whenever it has heard nothing for that long (each request
  bounded by `progress_interval` of loop time), so `stale_for()` stays below about twice the
  interval while the registry answers and grows while it does not.
- Times (staleness, pauses, the progress interval) come from `clock`; backoff jitter from
  `backoff.rng`. Log lines go to `log`, each starting with `label`.
- Lifecycle: `start()` follows in the background, its first list retried like any re-list
  (`wait_synced()` waits for it); `list_and_start()` lists at once and raises the registry's
  error or whatever `on_snapshot` raises, leaving nothing running (it may be called again),
  then follows in the background. Either succeeds once. `close()` stops following and
  cancels the watch; idempotent; the mirror cannot be started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from raftreg.client.protocol import KeyLike, RegistryClient, to_bytes
from raftreg.client.resumable_watch import Watch
from raftreg.common.backoff import Backoff
from raftreg.common.clock import Clock, LoopClock
from raftreg.common.types import Event, KeyValue, RangeResult
from raftreg.errors import ClientClosed, FailedPrecondition, RegistryError

OnSnapshot = Callable[[tuple[KeyValue, ...], int], Awaitable[None]]
OnEvents = Callable[[tuple[Event, ...], int], Awaitable[None]]

_log = logging.getLogger("raftreg.client.mirror")


class PrefixMirror:
    """Follows every key under `prefix` for a caller's copy; see the module docstring."""

    def __init__(
        self,
        client: RegistryClient,
        prefix: KeyLike,
        *,
        on_snapshot: OnSnapshot,
        on_events: OnEvents,
        backoff: Backoff | None = None,
        progress_interval: float | None = None,
        clock: Clock | None = None,
        log: logging.Logger | None = None,
        label: str | None = None,
    ) -> None:
        self._client = client
        self._prefix = to_bytes(prefix)
        self._on_snapshot = on_snapshot
        self._on_events = on_events
        self._backoff = backoff or Backoff(base=0.1, max_delay=2.0, jitter="equal")
        self._progress_interval = progress_interval
        self._clock: Clock = clock or LoopClock()
        self._log = log or _log
        self._label = label or self._prefix.decode("utf-8", "backslashreplace")
        self._revision = 0
        self._heard_at: float | None = None
        self._synced = asyncio.Event()  # set once the first snapshot was applied
        self._watch: Watch | None = None  # the watch being followed, if any
        self._tasks: list[asyncio.Task[None]] = []  # [follow] or [follow, progress]
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ caller side

    @property
    def prefix(self) -> bytes:
        return self._prefix

    @property
    def revision(self) -> int:
        """The newest revision the copy is known to reflect (0 before the first list)."""
        return self._revision

    @property
    def synced(self) -> bool:
        """True once the first snapshot was applied."""
        return self._synced.is_set()

    @property
    def started(self) -> bool:
        """True once `start()` or a successful `list_and_start()` was called."""
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        """True from the start until `close()` or the mirror ended (client closed, callback
        error)."""
        return bool(self._tasks) and not self._tasks[0].done()

    def stale_for(self) -> float:
        """Seconds since the mirror last heard from the registry (inf before the first list)."""
        if self._heard_at is None:
            return float("inf")
        return max(0.0, self._clock.now() - self._heard_at)

    def start(self) -> None:
        """Follow in the background; the first list is retried like any re-list."""
        self._check_startable()
        self._spawn(None)

    async def list_and_start(self) -> None:
        """List now and apply the snapshot, then follow in the background. Raises the
        registry's error or what `on_snapshot` raised; nothing is left running then."""
        self._check_startable()
        snapshot, watch = await self._list_then_watch()
        if not self._closed:
            await self._load(snapshot, watch)
        if self._closed:  # close() ran meanwhile: nothing may run after it
            watch.cancel()
            raise FailedPrecondition(f"{self._label}: closed while starting")
        self._spawn(watch)

    async def wait_synced(self) -> None:
        """Until the first snapshot was applied."""
        await self._synced.wait()

    async def close(self) -> None:
        """Stop following (the caller's copy is left as it is) and cancel the watch.
        Idempotent."""
        self._closed = True
        w, self._watch = self._watch, None
        if w is not None:
            w.cancel()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # ------------------------------------------------------------------ internals

    def _check_startable(self) -> None:
        if self._started or self._closed:
            raise FailedPrecondition(f"{self._label}: a mirror can be started once")

    def _spawn(self, watch: Watch | None) -> None:
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(watch), name=f"mirror {self._label}")]
        if self._progress_interval is not None:
            self._tasks.append(loop.create_task(
                self._ask_progress(self._progress_interval), name=f"progress {self._label}"
            ))

    def _heard(self) -> None:
        self._heard_at = self._clock.now()

    async def _list_then_watch(self) -> tuple[RangeResult, Watch]:
        return await self._client.list_then_watch(
            self._prefix, progress_notify=self._progress_interval is not None
        )

    async def _load(self, snapshot: RangeResult, watch: Watch) -> None:
        """Apply `snapshot`; `watch` (from its revision + 1) becomes the one followed, or is
        cancelled if `on_snapshot` raises."""
        self._watch = watch
        self._revision = snapshot.revision
        self._heard()
        try:
            await self._on_snapshot(snapshot.kvs, snapshot.revision)
        except BaseException:
            watch.cancel()
            self._watch = None
            raise
        self._synced.set()

    async def _relist(self) -> Watch | None:
        """List (retrying with backoff) and apply the snapshot; the watch that follows it, or
        None once the client is closed."""
        attempt = 0
        while True:
            try:
                snapshot, watch = await self._list_then_watch()
            except ClientClosed as e:
                self._log.warning("%s: stopped (%s)", self._label, e)
                return None
            except RegistryError as e:
                attempt += 1
                delay = self._backoff.delay(attempt)
                self._log.warning(
                    "%s: %s failed (%s); retrying in %.2fs",
                    self._label, "re-list" if self.synced else "list", e, delay,
                )
                await self._clock.sleep(delay)
                continue
            await self._load(snapshot, watch)
            return watch

    async def _follow(self, watch: Watch | None) -> None:
        try:
            while not self._closed:
                if watch is None:
                    watch = await self._relist()
                    if watch is None:
                        return
                try:
                    await self._drain(watch)
                except RegistryError as e:
                    self._log.warning("%s: watch failed (%s); re-listing", self._label, e)
                    await self._clock.sleep(self._backoff.base)
                finally:
                    watch.cancel()
                    if self._watch is watch:
                        self._watch = None
                watch = None
        except Exception:
            self._log.exception("%s: stopped by an unexpected error", self._label)
        finally:
            for t in self._tasks[1:]:  # nothing left to ask progress for
                t.cancel()

    async def _drain(self, watch: Watch) -> None:
        """Apply `watch`'s batches until it is compacted or ends; raises its failure."""
        async for batch in watch:
            if batch.compacted:
                self._log.info(
                    "%s: watch compacted at %d; re-listing", self._label, batch.compact_revision
                )
                return
            self._revision = max(self._revision, batch.revision)
            self._heard()
            if batch.events:
                await self._on_events(batch.events, batch.revision)

    async def _ask_progress(self, interval: float) -> None:
        while not self._closed:
            await self._clock.sleep(interval)
            if self.stale_for() < interval:
                continue  # heard recently (events, or another watcher's progress request)
            # asyncio.timeout, not wait_for: before 3.12 wait_for swallows a cancellation that
            # arrives as the request completes, and close() would wait on this loop forever
            with contextlib.suppress(RegistryError, TimeoutError):
                async with asyncio.timeout(interval):
                    await self._client.request_progress()
