"""`Session`: a lease kept alive for as long as the session is open (etcd's concurrency.Session).

Contracts:
- `open()` (or `async with`) grants a lease of `ttl` seconds and hands it to the client's one
  `LeaseKeeper`, which renews it about every ttl/3. Every key a `Lock` or `Election` writes
  is attached to this lease, so it disappears when the lease does.
- The session is *lost* once the keeper gives the lease up: the registry answered that the
  lease is gone (expired or revoked), or no renewal was acknowledged within the TTL (the
  keeper never assumes the lease alive past what the registry confirmed). A lost session stays
  lost: `lost` is True, `wait_lost()` returns, callbacks registered with `on_lost` have run
  once, and recipes raise `SessionExpired`. Open a new session to continue.
- `close()` stops renewing and revokes the lease (deleting every key under it in one revision);
  if the registry cannot be reached within `close_timeout` the keys go when the lease expires.
  Idempotent; a closed session is treated as lost by the recipes.
- One event loop; not thread-safe (see `raftreg.concurrency.sync` for threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

from raftreg.client.protocol import RegistryClient
from raftreg.concurrency.errors import SessionExpired
from raftreg.errors import FailedPrecondition, InvalidArgument, LeaseNotFound, RegistryError

log = logging.getLogger("raftreg.concurrency")

DEFAULT_SESSION_TTL = 60  # seconds, as etcd's concurrency.NewSession


class Session:
    """A kept-alive lease; see the module docstring. One use: open, then close."""

    def __init__(
        self, client: RegistryClient, *, ttl: int = DEFAULT_SESSION_TTL,
        close_timeout: float = 2.0,
    ) -> None:
        if ttl <= 0:
            raise InvalidArgument("session ttl must be positive")
        self.client = client
        self._ttl = ttl
        self._close_timeout = close_timeout
        self._lease_id = 0
        self._granted_ttl = 0
        self._lost = asyncio.Event()
        self._closed = False
        self._callbacks: list[Callable[[], None]] = []
        # One local guard per lock/election prefix: two recipes of this session on one name
        # would share the key `<name>/<lease hex>`, so they take turns in this process first.
        self._guards: dict[bytes, asyncio.Lock] = {}

    # ------------------------------------------------------------------ state

    @property
    def lease_id(self) -> int:
        """The session's lease (0 before `open()`)."""
        return self._lease_id

    @property
    def ttl(self) -> int:
        """The TTL the registry granted (it may raise the requested one to its minimum)."""
        return self._granted_ttl or self._ttl

    @property
    def close_timeout(self) -> float:
        """How long `close()` (and a recipe's clean-up) waits for the registry."""
        return self._close_timeout

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost(self) -> bool:
        """True once the lease is lost or the session closed; it never becomes False again."""
        return self._lost.is_set()

    async def wait_lost(self) -> None:
        """Until the session is lost (or closed)."""
        await self._lost.wait()

    def check(self) -> None:
        """Raise `SessionExpired` if the session is lost or closed, `FailedPrecondition` if it
        was never opened."""
        if self._lost.is_set():
            raise SessionExpired(
                "session closed" if self._closed else f"session lease {self._lease_id:x} lost"
            )
        if not self._lease_id:
            raise FailedPrecondition("session is not open (use `async with Session(...)`)")

    @contextlib.contextmanager
    def on_lost(self, callback: Callable[[], None]) -> Iterator[None]:
        """Within the block, `callback()` runs (once, on the loop) when the session is lost;
        at once if it is lost already. It must not block."""
        if self._lost.is_set():
            callback()
        self._callbacks.append(callback)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

    def _guard(self, prefix: bytes) -> asyncio.Lock:
        return self._guards.setdefault(prefix, asyncio.Lock())

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> Self:
        if self._lease_id or self._closed:
            raise FailedPrecondition("a Session can be opened once")
        keeper = self.client.keepalive_manager()
        sent = keeper.clock.now()
        grant = await self.client.lease_grant(self._ttl)
        self._lease_id, self._granted_ttl = grant.id, grant.ttl
        # The lease counts as alive from the grant's send time, as `grant_and_keep` does.
        keeper.keep(grant.id, grant.ttl, self._on_keeper_lost,
                    alive_for=grant.ttl - (keeper.clock.now() - sent))
        log.debug("session lease %x (ttl %ds) opened", grant.id, grant.ttl)
        return self

    def _on_keeper_lost(self, lease_id: int) -> None:
        if lease_id == self._lease_id:
            self._set_lost()

    def _set_lost(self) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:
                log.exception("session lost callback failed")

    async def close(self) -> None:
        """Stop renewing and revoke the lease (every key under it goes). Idempotent."""
        if self._closed:
            return
        self._closed = True
        lease = self._lease_id
        self._set_lost()
        if not lease:
            return
        with contextlib.suppress(FailedPrecondition):  # the client is closed already
            self.client.keepalive_manager().forget(lease)
        try:
            await asyncio.wait_for(self.client.lease_revoke(lease), self._close_timeout)
        except LeaseNotFound:
            pass  # expired already: its keys are gone
        except (RegistryError, TimeoutError) as e:
            log.warning("closing session: revoking lease %x failed (%s); its keys go when "
                        "it expires", lease, e)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
