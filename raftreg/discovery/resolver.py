"""`Resolver`: a local cache of a service's live instances, kept current by list-then-watch.

Contracts:
- The cache starts from a linearizable list of `/services/<service>/` and then follows a watch
  from the list's revision + 1, so it never misses or repeats a change (the client's `Watch`
  resumes gap-free across registry failovers). A compacted watch re-lists.
- Every change is applied in revision order; subscribers are called once per applied batch
  with the full, id-sorted tuple of instances (only when it changed). Callbacks run on the
  event loop and must not block; exceptions they raise are logged and ignored.
- A malformed registration (bad JSON, missing address, key deeper than <service>/<id>) is
  skipped with one warning log line per revision and is not an instance; it never stops the
  resolver.
- While the registry is unreachable the cache keeps the last known instances (a registry
  hiccup never empties it) and `stale_for()` grows: it is the time since the resolver last
  heard from the registry (an event, a list, or a progress answer, asked for every
  `progress_interval` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from raftreg.client.protocol import RegistryClient
from raftreg.client.resumable_watch import Watch
from raftreg.common.backoff import Backoff
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.discovery.instance import (
    Instance,
    InvalidInstance,
    decode_instance,
    service_of,
    service_range_prefix,
)
from raftreg.errors import FailedPrecondition, RegistryError, Unavailable

log = logging.getLogger("raftreg.discovery")

Subscriber = Callable[[tuple[Instance, ...]], None]


class Resolver:
    """Live instances of `service`; see the module docstring."""

    def __init__(
        self,
        client: RegistryClient,
        service: str,
        *,
        progress_interval: float = 1.0,
        retry_base: float = 0.1,
        retry_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.service = service
        self._prefix = service_range_prefix(service)
        self._progress_interval = progress_interval
        self._rng = rng or random.Random()
        self._retry = Backoff(base=retry_base, max_delay=retry_max, jitter="equal",
                              rng=self._rng)
        self._by_key: dict[bytes, Instance] = {}
        self._instances: tuple[Instance, ...] = ()
        self._revision = 0
        self._heard_at: float | None = None
        self._subscribers: list[Subscriber] = []
        self._changed = asyncio.Condition()
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: Watch | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The live instances, sorted by id (the last known ones while the registry is away)."""
        return self._instances

    @property
    def revision(self) -> int:
        """The registry revision the cache reflects (0 before the first list)."""
        return self._revision

    def stale_for(self) -> float:
        """Seconds since the resolver last heard from the registry (inf before the first list)."""
        if self._heard_at is None:
            return float("inf")
        return max(0.0, asyncio.get_running_loop().time() - self._heard_at)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(instances)` after every change; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def start(self, *, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Start following the registry. With `wait`, returns after the first list and raises
        `Unavailable` if none succeeded within `timeout`."""
        if self._tasks or self._closed:
            raise FailedPrecondition("a Resolver can be started once")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name=f"resolve {self.service}"),
            loop.create_task(self._ask_progress(), name=f"progress {self.service}"),
        ]
        if wait:
            try:
                await asyncio.wait_for(self._synced.wait(), timeout)
            except TimeoutError:
                await self.stop()
                raise Unavailable(
                    f"could not list {self._prefix} within {timeout}s"
                ) from None

    async def wait_for(
        self, predicate: Callable[[tuple[Instance, ...]], bool], timeout: float
    ) -> tuple[Instance, ...]:
        """Until `predicate(instances)` holds; `TimeoutError` after `timeout` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self._instances))
            return self._instances

    async def stop(self) -> None:
        """Stop following (the cache keeps its last contents). Idempotent."""
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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _heard(self) -> None:
        self._heard_at = asyncio.get_running_loop().time()

    def _decode(self, kv: KeyValue) -> Instance | None:
        if service_of(kv.key) != self.service:
            return None  # another service under the same range prefix
        try:
            inst = decode_instance(kv.key, kv.value)
        except InvalidInstance as e:
            log.warning("skipping registration %r (revision %d): %s", kv.key, kv.mod_revision, e)
            return None
        if inst.service != self.service:
            return None
        return inst

    async def _publish(self) -> None:
        new = tuple(sorted(self._by_key.values(), key=lambda i: i.id))
        if new == self._instances:
            return
        self._instances = new
        for cb in list(self._subscribers):
            try:
                cb(new)
            except Exception:
                log.exception("resolver subscriber for %s failed", self.service)
        async with self._changed:
            self._changed.notify_all()

    async def _load(self, kvs: Sequence[KeyValue], revision: int) -> None:
        by_key: dict[bytes, Instance] = {}
        for kv in kvs:
            inst = self._decode(kv)
            if inst is not None:
                by_key[kv.key] = inst
        self._by_key = by_key
        self._revision = revision
        self._heard()
        await self._publish()
        self._synced.set()

    async def _apply(self, events: Sequence[Event], revision: int) -> None:
        for ev in events:
            if ev.type == EventType.DELETE:
                self._by_key.pop(ev.kv.key, None)
                continue
            inst = self._decode(ev.kv)
            if inst is None:
                self._by_key.pop(ev.kv.key, None)
            else:
                self._by_key[ev.kv.key] = inst
        self._revision = max(self._revision, revision)
        self._heard()
        await self._publish()

    async def _follow(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                snap, watch = await self._client.list_then_watch(
                    self._prefix, progress_notify=True
                )
            except FailedPrecondition as e:  # the client was closed: nothing more to follow
                log.warning("resolving %s stopped: %s", self.service, e)
                return
            except RegistryError as e:
                delay = self._retry.delay(attempt + 1)
                attempt += 1
                log.warning("listing %s failed (%s); retrying in %.2fs", self._prefix, e, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._watch = watch
            await self._load(snap.kvs, snap.revision)
            try:
                async for batch in watch:
                    if batch.compacted:
                        log.info("watch of %s compacted; listing again", self._prefix)
                        break
                    if batch.events:
                        await self._apply(batch.events, batch.revision)
                    else:
                        self._revision = max(self._revision, batch.revision)
                        self._heard()
            except RegistryError as e:
                log.warning("watch of %s failed (%s); listing again", self._prefix, e)
                await asyncio.sleep(self._retry.base)
            finally:
                watch.cancel()
                self._watch = None

    async def _ask_progress(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._progress_interval)
            if self.stale_for() < self._progress_interval:
                continue  # heard recently (events, or another resolver's progress request)
            with contextlib.suppress(RegistryError, TimeoutError):
                await asyncio.wait_for(self._client.request_progress(), self._progress_interval)
