"""`Registration`: an instance keeps itself registered under a lease for as long as it runs.

Contracts:
- The instance is written at `/services/<service>/<id>` (JSON, see `instance`) under a lease of
  `ttl` seconds that the client's one `LeaseKeeper` renews (about every ttl/3).
- When the lease is lost (the keeper heard no renewal for a TTL, or the registry answered that
  the lease is gone — registry outage, long process pause) the instance registers again by
  itself under a new lease, retrying with capped exponential backoff and jitter until it
  succeeds or is stopped. A re-registration moves the key to the new lease, so the old lease's
  expiry never deletes it.
- `stop()` deregisters at once: the lease is revoked, which deletes the key in the same
  revision; if that fails (registry unreachable) the key goes when the lease expires.
- `start(wait=True)` returns after the first successful registration and raises `Unavailable`
  if it has not succeeded within `timeout`; with `wait=False` it returns at once and the first
  registration happens in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from types import TracebackType
from typing import Self

from raftreg.client.protocol import RegistryClient
from raftreg.common.backoff import Backoff
from raftreg.discovery.instance import Instance, encode_instance
from raftreg.errors import (
    ClientClosed,
    FailedPrecondition,
    InvalidArgument,
    RegistryError,
    Unavailable,
)

log = logging.getLogger("raftreg.discovery")

DEFAULT_TTL = 10


class Registration:
    """Keeps `instance` registered; see the module docstring. One use: start, then stop."""

    def __init__(
        self,
        client: RegistryClient,
        instance: Instance,
        *,
        ttl: int = DEFAULT_TTL,
        retry_base: float = 0.2,
        retry_max: float = 5.0,
        deregister_timeout: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if ttl <= 0:
            raise InvalidArgument("ttl must be positive")
        if instance.registered_at == 0.0:
            instance = dataclasses.replace(instance, registered_at=time.time())
        self._client = client
        self.instance = instance
        self._ttl = ttl
        self._deregister_timeout = deregister_timeout
        self._rng = rng or random.Random()
        self._retry = Backoff(base=retry_base, max_delay=retry_max, jitter="equal",
                              rng=self._rng)
        self._lease_id = 0
        self._registered = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.registrations = 0  # successful (re-)registrations, for tests and metrics

    @property
    def key(self) -> str:
        return self.instance.key

    @property
    def registered(self) -> bool:
        """True while the key is believed present (a lease is held and kept alive)."""
        return self._registered.is_set()

    @property
    def lease_id(self) -> int:
        """The current lease (0 while not registered)."""
        return self._lease_id if self.registered else 0

    async def start(self, *, wait: bool = True, timeout: float | None = 10.0) -> None:
        if self._task is not None or self._stopped:
            raise FailedPrecondition("a Registration can be started once")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"register {self.instance.service}/{self.instance.id}"
        )
        if wait:
            try:
                await self.wait_registered(timeout)
            except Unavailable:
                await self.stop()  # no registration left behind by a start that failed
                raise

    async def wait_registered(self, timeout: float | None = None) -> None:
        """Until the instance is registered; `Unavailable` after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._registered.wait(), timeout)
        except TimeoutError:
            raise Unavailable(
                f"{self.instance.service}/{self.instance.id} not registered within {timeout}s"
            ) from None

    async def stop(self) -> None:
        """Deregister (revoke the lease) and stop re-registering. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease, self._lease_id = self._lease_id, 0
        was_registered = self._registered.is_set()
        self._registered.clear()
        if lease:
            self._client.keepalive_manager().forget(lease)
            try:
                await asyncio.wait_for(self._client.lease_revoke(lease), self._deregister_timeout)
            except (RegistryError, TimeoutError) as e:
                if was_registered:
                    log.warning(
                        "deregistering %s: %s; the key goes when lease %016x expires",
                        self.key, e, lease,
                    )

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

    def _on_lost(self, lease_id: int) -> None:
        if lease_id == self._lease_id:
            self._lost.set()

    async def _register_once(self) -> None:
        keeper = self._client.keepalive_manager()
        old = self._lease_id
        grant = await self._client.lease_grant(self._ttl)
        self._lease_id = grant.id
        self._lost.clear()
        keeper.keep(grant.id, grant.ttl, self._on_lost)
        try:
            await self._client.put(self.key, encode_instance(self.instance), lease=grant.id)
        except BaseException:
            keeper.forget(grant.id)
            self._lease_id = old
            with contextlib.suppress(RegistryError, TimeoutError):
                await asyncio.wait_for(self._client.lease_revoke(grant.id), 1.0)
            raise
        if old and old != grant.id:
            keeper.forget(old)
            with contextlib.suppress(RegistryError, TimeoutError):
                await asyncio.wait_for(self._client.lease_revoke(old), 1.0)

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._register_once()
            except ClientClosed as e:  # nothing more to do
                log.warning("registering %s stopped: %s", self.key, e)
                return
            except RegistryError as e:
                delay = self._retry.delay(attempt + 1)
                attempt += 1
                log.warning(
                    "registering %s failed (%s); retrying in %.2fs", self.key, e, delay
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.registrations += 1
            self._registered.set()
            log.info(
                "registered %s at %s (lease %016x, ttl %ds)",
                self.key, self.instance.address, self._lease_id, self._ttl,
            )
            await self._lost.wait()
            self._registered.clear()
            log.warning("lease of %s lost; registering again", self.key)
