"""`Resolver`: a local cache of a service's live instances, kept current by list-then-watch.

Contracts:
- The cache is a `raftreg.client.mirror.PrefixMirror` of `/services/<service>` (its module
  docstring holds the guarantees): a linearizable list, then a watch from the list's
  revision + 1, so it never misses or repeats a change; a compacted or failed watch re-lists,
  with backoff while the registry is unreachable.
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

from raftreg.client.mirror import PrefixMirror
from raftreg.client.protocol import RegistryClient
from raftreg.common.backoff import Backoff
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.discovery.instance import (
    Instance,
    InvalidInstance,
    decode_instance,
    service_of,
    service_range_prefix,
)
from raftreg.errors import FailedPrecondition, Unavailable

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
        self.service = service
        self._prefix = service_range_prefix(service)
        self._mirror = PrefixMirror(
            client, self._prefix, on_snapshot=self._load, on_events=self._apply,
            backoff=Backoff(base=retry_base, max_delay=retry_max, jitter="equal",
                            rng=rng or random.Random()),
            progress_interval=progress_interval, log=log, label=f"resolver of {service}",
        )
        self._by_key: dict[bytes, Instance] = {}
        self._instances: tuple[Instance, ...] = ()
        self._subscribers: list[Subscriber] = []
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ public API

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The live instances, sorted by id (the last known ones while the registry is away)."""
        return self._instances

    @property
    def revision(self) -> int:
        """The registry revision the cache reflects (0 before the first list)."""
        return self._mirror.revision

    def stale_for(self) -> float:
        """Seconds since the resolver last heard from the registry (inf before the first list)."""
        return self._mirror.stale_for()

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
        if self._mirror.started or self._mirror.closed:
            raise FailedPrecondition("a Resolver can be started once")
        self._mirror.start()
        if wait:
            try:
                # asyncio.timeout, not wait_for: before 3.12 wait_for can swallow a cancel
                async with asyncio.timeout(timeout):
                    await self._mirror.wait_synced()
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
        await self._mirror.close()

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
        await self._publish()

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
        await self._publish()
