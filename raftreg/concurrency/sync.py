"""Blocking `SyncSession`, `SyncLock` and `SyncElection` over a `SyncRegistryClient`.

The async recipes run on the `SyncRegistryClient`'s private event loop (where its async client
lives); each blocking call submits one coroutine there and waits for it, so any number of
threads may use them at once. Threads that share a `SyncSession` and a lock name take turns
on that loop first (see `Lock`), so a `SyncLock` excludes threads of one process as well as
other processes.

A timed-out or interrupted `acquire`/`campaign` (timeout, KeyboardInterrupt) cancels the
coroutine on the loop, which deletes the waiter's key as a cancelled `acquire` does.

`observe()` has no blocking counterpart: use the async `observe` on an async client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from raftreg.client.protocol import KeyLike, LoopRunner
from raftreg.common.types import KeyValue
from raftreg.concurrency.election import Election
from raftreg.concurrency.lock import Lock
from raftreg.concurrency.session import DEFAULT_SESSION_TTL, Session
from raftreg.errors import DeadlineExceeded

T = TypeVar("T")


# What the blocking recipes need of `raftreg.client.SyncRegistryClient` (see `LoopRunner`).
SyncRegistryClient = LoopRunner


def _run(client: SyncRegistryClient, coro: Coroutine[Any, Any, T]) -> T:
    return client.run(coro)


async def _within(coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise DeadlineExceeded(f"{what}: not within {timeout:g}s") from None


class SyncSession:
    """A `Session` opened at construction on `client`'s loop; `close()` revokes it."""

    def __init__(self, client: SyncRegistryClient, *, ttl: int = DEFAULT_SESSION_TTL) -> None:
        self.client = client

        async def open_session() -> Session:
            return await Session(client.client, ttl=ttl).open()

        self.session = _run(client, open_session())

    @property
    def lease_id(self) -> int:
        return self.session.lease_id

    @property
    def lost(self) -> bool:
        return self.session.lost

    def close(self) -> None:
        _run(self.client, self.session.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncLock:
    """A blocking `Lock`. `with lock:` acquires and releases; `acquire(timeout)` returns the
    fencing token or raises `DeadlineExceeded` (leaving no key)."""

    def __init__(self, session: SyncSession, name: KeyLike) -> None:
        self._client = session.client
        self.lock = Lock(session.session, name)

    @property
    def key(self) -> bytes:
        return self.lock.key

    @property
    def revision(self) -> int:
        return self.lock.revision

    def acquire(self, timeout: float | None = None) -> int:
        return _run(self._client, _within(self.lock.acquire(), timeout, "acquiring the lock"))

    def try_acquire(self) -> int:
        return _run(self._client, self.lock.try_acquire())

    def release(self) -> None:
        _run(self._client, self.lock.release())

    def holder(self) -> KeyValue | None:
        return _run(self._client, self.lock.holder())

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run(self._client, self.lock.__aexit__(exc_type, exc, tb))


class SyncElection:
    """A blocking `Election` (campaign, proclaim, resign, leader)."""

    def __init__(self, session: SyncSession, name: KeyLike) -> None:
        self._client = session.client
        self.election = Election(session.session, name)

    def campaign(self, value: KeyLike, timeout: float | None = None) -> int:
        return _run(self._client,
                    _within(self.election.campaign(value), timeout, "campaigning"))

    def proclaim(self, value: KeyLike) -> None:
        _run(self._client, self.election.proclaim(value))

    def resign(self) -> None:
        _run(self._client, self.election.resign())

    def leader(self) -> KeyValue | None:
        return _run(self._client, self.election.leader())
