"""`Lock`: a distributed mutex (etcd's concurrency.Mutex) on a `Session`.

Contracts:
- `acquire()` enqueues our key `<name>/<lease hex>` (under the session's lease) and returns
  once it has the lowest create revision under `<name>/`; it returns the fencing token, that
  create revision. Tokens strictly increase from one holder to the next (a later holder's key
  was created after every earlier holder's key was).
- Waiters are served in create-revision order (FIFO by arrival at the registry).
- A holder that dies frees the lock when its lease ends (TTL after its last renewal); its key's
  DELETE wakes the next waiter.
- A failed or cancelled `acquire()` deletes its key (waiting, if the cancellation came during
  the enqueueing write, for that write's outcome first) and raises; it leaves nothing behind.
  If the session is lost while waiting it raises `SessionExpired`.
- `release()` deletes our key (only if it is still ours) and is idempotent; `async with lock`
  acquires and releases. If the registry cannot be reached the key goes with the session.
- Within one process, `Lock`s of the same session and name take turns locally first (they
  would share one key), so any number of tasks may share a session.
- A holder is only as safe as its lease: check `session.lost`, and guard the protected
  resource with the token (`revision`, or `owner_compare()` in a Txn), as with etcd.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from raftreg.client.protocol import KeyLike
from raftreg.common.types import Compare, KeyValue
from raftreg.concurrency._queue import KeyQueue, head
from raftreg.concurrency.session import Session
from raftreg.errors import FailedPrecondition, RegistryError

log = logging.getLogger("raftreg.concurrency")


class Lock:
    """A mutex named `name` held through `session`; see the module docstring."""

    def __init__(self, session: Session, name: KeyLike) -> None:
        self._q = KeyQueue(session, name)
        self.session = session
        self._rev = 0
        self._guard: asyncio.Lock | None = None

    @property
    def prefix(self) -> bytes:
        """`<name>/`: every waiter's key is under it."""
        return self._q.prefix

    @property
    def key(self) -> bytes:
        """Our key, `<name>/<lease hex>` (as `etcdctl lock` prints it)."""
        return self._q.key

    @property
    def revision(self) -> int:
        """The fencing token while held (our key's create revision), else 0."""
        return self._rev

    @property
    def held(self) -> bool:
        """Whether this process believes it holds the lock: acquired, not released, and the
        session not lost. (A belief: `is_held()` asks the registry.)"""
        return self._rev != 0 and not self.session.lost

    def owner_compare(self) -> Compare:
        """A Txn compare true only while we hold the lock (etcd's `Mutex.IsOwner`): put it in
        the `compare` of writes that must not happen after the lock was lost."""
        if not self._rev:
            raise FailedPrecondition("the lock is not held")
        return self._q.is_ours(self._rev)

    async def acquire(self) -> int:
        """Wait for the lock; returns the fencing token. See the module docstring."""
        if self._guard is not None:
            raise FailedPrecondition("this Lock is held already; release it first")
        self.session.check()
        guard = self.session._guard(self.prefix)
        await guard.acquire()
        try:
            rev, _ = await self._q.enter(b"")
        except BaseException:
            guard.release()
            raise
        self._rev, self._guard = rev, guard
        return rev

    async def try_acquire(self) -> int:
        """Take the lock if nobody holds it or waits for it; returns the token, or 0 (leaving
        no key) when someone else is ahead (etcd's `TryLock`)."""
        if self._guard is not None:
            raise FailedPrecondition("this Lock is held already; release it first")
        self.session.check()
        guard = self.session._guard(self.prefix)
        if guard.locked():
            return 0
        await guard.acquire()  # free: returns at once
        taken = False
        try:
            joining = asyncio.ensure_future(self._q.join(b""))
            try:
                rev, _ = await asyncio.shield(joining)
                first = await head(self.session.client, self.prefix)
            except BaseException:
                await self._q.abandon(joining, self.session.close_timeout)
                raise
            if first is None or first.create_revision != rev:
                await self._q.abandon(joining, self.session.close_timeout)
                return 0
            taken = True
        finally:
            if not taken:
                guard.release()
        self._rev, self._guard = rev, guard
        return rev

    async def release(self) -> None:
        """Delete our key if it is still ours; idempotent. Raises the `RegistryError` if the
        registry could not be reached (the lock is given up locally all the same, and the key
        goes when the session's lease does)."""
        rev, guard = self._rev, self._guard
        self._rev, self._guard = 0, None
        if guard is None:
            return
        try:
            # After a close the lease was revoked (the key with it). After a loss the key may
            # still be there (the loss may be this process's judgement alone): delete it.
            if not self.session.closed:
                await self._q.leave_in_time(rev)
        finally:
            guard.release()

    async def holder(self) -> KeyValue | None:
        """The current holder's key-value (lowest create revision under `<name>/`), or None."""
        return await head(self.session.client, self.prefix)

    async def is_held(self) -> bool:
        """Asks the registry: is our key the holder, with the create revision we acquired?"""
        if not self._rev:
            return False
        first = await self.holder()
        return first is not None and first.key == self.key and first.create_revision == self._rev

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
            return
        try:
            await self.release()
        except RegistryError as e:  # do not hide the body's own exception
            log.warning("releasing %s after %r failed: %s",
                        self.prefix.decode(errors="replace"), exc, e)
