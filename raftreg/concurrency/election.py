"""`Election`: leader election (etcd's concurrency.Election) on a `Session`.

Contracts:
- `campaign(value)` queues our key `<name>/<lease hex>` with `value` (the Lock algorithm) and
  returns, as the leader, once it heads the queue; it returns our key's create revision (a
  term number that strictly increases from leader to leader). Cancelled or failed campaigns
  leave no key; a lost session raises `SessionExpired`. If our key exists already (an earlier
  campaign of this session) it is reused and its value set to `value`.
- `proclaim(value)` changes the leader's value only while we lead: a Txn conditioned on our
  key's create revision. Otherwise `NotLeader` (and we no longer consider ourselves leader).
- `resign()` deletes our key if it is still ours; idempotent. The next campaigner leads.
- `leader()` is the key with the lowest create revision under `<name>/` (None: no leader).
- `observe()` yields the leader's key-value first (if there is one) and then every time the
  leader or its value changes, from one list-then-watch of `<name>/` (re-listed after a
  compaction): no change is skipped and none is reported twice; no leader yields nothing.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType
from typing import Self

from raftreg.client.protocol import KeyLike, RegistryClient, to_bytes
from raftreg.client.resumable_watch import Watch
from raftreg.common.types import EventType, KeyValue, Put, Txn
from raftreg.concurrency._queue import KeyQueue, _CancelCheck, head, queue_prefix
from raftreg.concurrency.errors import NotLeader
from raftreg.concurrency.session import Session
from raftreg.errors import FailedPrecondition


async def leader(client: RegistryClient, name: KeyLike) -> KeyValue | None:
    """The leader of election `name` (lowest create revision under `<name>/`), or None."""
    return await head(client, queue_prefix(name))


def observe(client: RegistryClient, name: KeyLike) -> LeaderObserver:
    """Follow the leader of election `name`; no session needed. See `LeaderObserver`."""
    return LeaderObserver(client, queue_prefix(name))


class LeaderObserver:
    """An async iterator of the leader's `KeyValue` as it changes (see the module docstring).
    Use `async with observe(...) as leaders: async for kv in leaders: ...`, or call `close()`;
    closing (or closing the client) ends the iteration."""

    def __init__(self, client: RegistryClient, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._keys: dict[bytes, KeyValue] = {}
        self._watch: Watch | None = None
        self._pending: collections.deque[KeyValue] = collections.deque()
        self._last: tuple[bytes, int, bytes] | None = None
        self._closed = False

    def _note_leader(self) -> None:
        if not self._keys:
            self._last = None
            return
        kv = min(self._keys.values(), key=lambda kv: kv.create_revision)
        now = (kv.key, kv.create_revision, kv.value)
        if now != self._last:
            self._last = now
            self._pending.append(kv)

    async def _list(self) -> None:
        snap, self._watch = await self._client.list_then_watch(self._prefix)
        self._keys = {kv.key: kv for kv in snap.kvs}
        self._note_leader()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> KeyValue:
        cancelled = _CancelCheck()
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._watch is None:
                await self._list()
                cancelled.check()  # a cancellation the client swallowed (see _CancelCheck)
                continue
            try:
                batch = await anext(self._watch)
            except StopAsyncIteration:  # cancelled by close(), or the client was closed
                self._closed = True
                raise
            if batch.compacted:
                self._watch.cancel()
                self._watch = None
                continue
            for e in batch.events:
                if e.type == EventType.PUT:
                    self._keys[e.kv.key] = e.kv
                else:
                    self._keys.pop(e.kv.key, None)
            self._note_leader()

    def close(self) -> None:
        """End the iteration and cancel the watch. Idempotent."""
        self._closed = True
        self._pending.clear()
        if self._watch is not None:
            self._watch.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Election:
    """Election `name` as seen by `session`'s campaigner; see the module docstring."""

    def __init__(self, session: Session, name: KeyLike) -> None:
        self._q = KeyQueue(session, name)
        self.session = session
        self._rev = 0
        self._guard: asyncio.Lock | None = None

    @property
    def prefix(self) -> bytes:
        return self._q.prefix

    @property
    def key(self) -> bytes:
        """Our campaign key, `<name>/<lease hex>`."""
        return self._q.key

    @property
    def revision(self) -> int:
        """Our key's create revision while we lead (the term), else 0."""
        return self._rev

    @property
    def is_leader(self) -> bool:
        """Whether we believe we lead: campaign won, not resigned, session not lost."""
        return self._rev != 0 and not self.session.lost

    async def campaign(self, value: KeyLike) -> int:
        """Wait until we lead with `value`; returns our term (create revision)."""
        if self._guard is not None:
            raise FailedPrecondition("already leading; resign first")
        self.session.check()
        guard = self.session._guard(self.prefix)
        await guard.acquire()
        v = to_bytes(value)
        try:
            rev, existing = await self._q.enter(v)
        except BaseException:
            guard.release()
            raise
        self._rev, self._guard = rev, guard
        if existing is not None and existing.value != v:
            await self.proclaim(v)
        return rev

    async def proclaim(self, value: KeyLike) -> None:
        """Set the leader's value, only if we still lead; otherwise `NotLeader`."""
        if not self._rev:
            raise NotLeader("not the leader: campaign first")
        self.session.check()
        r = await self.session.client.txn(Txn(
            compare=(self._q.is_ours(self._rev),),
            success=(Put(self.key, to_bytes(value), lease=self.session.lease_id),),
        ))
        if not r.succeeded:
            self._give_up()
            raise NotLeader(f"{self.key.decode(errors='replace')} is no longer the leader")

    async def resign(self) -> None:
        """Stop leading: delete our key if it is still ours. Idempotent."""
        rev = self._rev
        if self._guard is None:
            return
        try:
            if not self.session.closed:
                await self._q.leave_in_time(rev)
        finally:
            self._give_up()

    def _give_up(self) -> None:
        guard, self._guard, self._rev = self._guard, None, 0
        if guard is not None:
            guard.release()

    async def leader(self) -> KeyValue | None:
        return await head(self.session.client, self.prefix)

    def observe(self) -> LeaderObserver:
        return LeaderObserver(self.session.client, self.prefix)
