"""Blocking `SyncRegistration` and `SyncResolver` over a `SyncRegistryClient`, for processes
without an event loop (Flask, Django, scripts).

The async `Registration` and `Resolver` run on the `SyncRegistryClient`'s private event loop
thread (where its async client lives), with every guarantee of theirs: the registration is
kept alive and re-made by itself in the background, the resolver follows the registry by
list-then-watch. The blocking calls (`start`, `stop`, `wait_for`) submit one coroutine to that
loop and wait; `instances` and `registered` read a snapshot and never block.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from raftreg.client.protocol import LoopRunner
from raftreg.discovery.instance import Instance
from raftreg.discovery.registration import DEFAULT_TTL, Registration
from raftreg.discovery.resolver import Resolver

# What the blocking recipes need of `raftreg.client.SyncRegistryClient` (see `LoopRunner`).
SyncRegistryClient = LoopRunner


class SyncRegistration:
    """`Registration` of `instance` on `client`'s loop; `start()` registers (blocking until
    the first registration, or `Unavailable` after `timeout`), `stop()` deregisters."""

    def __init__(self, client: SyncRegistryClient, instance: Instance, *,
                 ttl: int = DEFAULT_TTL, **options: Any) -> None:
        self._client = client

        async def make() -> Registration:
            return Registration(client.client, instance, ttl=ttl, **options)

        self.registration = client.run(make())

    @property
    def instance(self) -> Instance:
        return self.registration.instance

    @property
    def key(self) -> str:
        return self.registration.key

    @property
    def registered(self) -> bool:
        return self.registration.registered

    def start(self, *, timeout: float | None = 10.0) -> None:
        self._client.run(self.registration.start(timeout=timeout))

    def stop(self) -> None:
        self._client.run(self.registration.stop())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SyncResolver:
    """`Resolver` of `service` on `client`'s loop: `instances` is the live cache."""

    def __init__(self, client: SyncRegistryClient, service: str, **options: Any) -> None:
        self._client = client

        async def make() -> Resolver:
            return Resolver(client.client, service, **options)

        self.resolver = client.run(make())

    @property
    def service(self) -> str:
        return self.resolver.service

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The live instances, sorted by id (the last known ones while the registry is away)."""
        return self.resolver.instances

    def start(self, *, timeout: float | None = 10.0) -> None:
        """Start following; returns after the first list (`Unavailable` after `timeout`)."""
        self._client.run(self.resolver.start(timeout=timeout))

    def wait_for(self, predicate: Callable[[tuple[Instance, ...]], bool],
                 timeout: float) -> tuple[Instance, ...]:
        """Until `predicate(instances)` holds; `TimeoutError` after `timeout` seconds."""
        return self._client.run(self.resolver.wait_for(predicate, timeout))

    def stop(self) -> None:
        self._client.run(self.resolver.stop())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["SyncRegistration", "SyncResolver"]
