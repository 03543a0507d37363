"""The waiting queue shared by `Lock` and `Election` (etcd's Mutex algorithm).

Layout: a participant's key is `<name>/<session lease id in lower-case hex>` (etcd's
`pfx + fmt.Sprintf("%x", lease)`), attached to the session's lease. The queue under
`<name>/` is ordered by create revision; its head (lowest create revision) holds the lock or
leads the election.

Invariants:
- `join` writes our key only if it does not exist (a Txn comparing create_revision to 0; an
  existing key of ours is reused, as in etcd); our position is its create revision `rev`.
- `wait_turn(rev)` returns only after a linearizable read showed our key, with create revision
  `rev`, at the head of the queue. Keys created later always have higher create revisions, so
  once every lower key is gone we stay at the head until our key is deleted.
- While waiting we watch only our predecessor (the key with the next-lower create revision)
  for its DELETE, from the revision after the read that found it, so a deletion between the
  read and the watch is not missed; then the whole queue is read again (the predecessor may
  have been deleted because its lease expired, and the one before it may still be there).
- The wait ends with `SessionExpired` when the session is lost or our key is gone.
- `leave(rev)` deletes our key only if it still has create revision `rev` (0: whatever is
  there, for a join whose outcome is unknown); it never touches anyone else's key.
- `abandon(join)` is how a failed or cancelled join cleans up: it lets the join's own request
  finish first (so the delete cannot overtake a late put) and then leaves, in a task of its own
  that a second cancellation does not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from raftreg.client.protocol import KeyLike, RegistryClient, to_bytes
from raftreg.client.resumable_watch import WatchFilter
from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    EventType,
    KeyValue,
    Put,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
)
from raftreg.concurrency.errors import SessionExpired
from raftreg.concurrency.session import Session
from raftreg.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RegistryError

log = logging.getLogger("raftreg.concurrency")

_background: set[asyncio.Task[None]] = set()  # clean-ups that outlive a cancelled caller


def queue_prefix(name: KeyLike) -> bytes:
    """`<name>/`, the prefix under which the participants' keys live (etcd's layout)."""
    n = to_bytes(name)
    if not n:
        raise InvalidArgument("a lock or election name must not be empty")
    return n + b"/"


async def head(client: RegistryClient, prefix: bytes) -> KeyValue | None:
    """The key with the lowest create revision under `prefix` (linearizable), or None."""
    r = await client.get(
        prefix, prefix=True, limit=1, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE
    )
    return r.kvs[0] if r.kvs else None


class _CancelCheck:
    """Notices a cancellation that an awaited call swallowed.

    On Python 3.11 `asyncio.wait_for` returns the inner result when the cancellation arrives
    just as the inner awaitable finishes (CPython gh-86296), and clients use it (e.g. a watch
    waiting for its confirmation): the caller's `cancel()` is then lost. The task's
    `cancelling()` count still shows it, so a wait re-checks it against its value at the
    start before blocking again."""

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        self._base = self._task.cancelling() if self._task is not None else 0

    def pending(self) -> bool:
        return self._task is not None and self._task.cancelling() > self._base

    def check(self) -> None:
        if self.pending():
            raise asyncio.CancelledError


class KeyQueue:
    """One participant (this session) in the queue under `<name>/`."""

    def __init__(self, session: Session, name: KeyLike) -> None:
        self.session = session
        self.prefix = queue_prefix(name)

    @property
    def key(self) -> bytes:
        """Our key, `<name>/<lease hex>` (needs a session that was opened; it stays the same
        after the session is lost or closed)."""
        if not self.session.lease_id:
            raise FailedPrecondition("session is not open (use `async with Session(...)`)")
        return self.prefix + f"{self.session.lease_id:x}".encode()

    def is_ours(self, rev: int) -> Compare:
        """A Txn compare that holds only while our key exists with create revision `rev`."""
        return Compare(self.key, CompareTarget.CREATE, CompareResult.EQUAL, rev)

    async def join(self, value: bytes) -> tuple[int, KeyValue | None]:
        """Write our key with `value` unless it exists. Returns (create revision, the existing
        key-value if it was there already)."""
        self.session.check()
        key = self.key
        r = await self.session.client.txn(Txn(
            compare=(Compare(key, CompareTarget.CREATE, CompareResult.EQUAL, 0),),
            success=(Put(key, value, lease=self.session.lease_id),),
            failure=(Range(key),),
        ))
        if r.succeeded:
            return r.revision, None
        got = r.responses[0]
        assert isinstance(got, RangeResult) and got.kvs, "txn else-branch read our key"
        return got.kvs[0].create_revision, got.kvs[0]

    async def wait_turn(self, rev: int) -> None:
        """Until our key (create revision `rev`) heads the queue; see the module docstring."""
        client = self.session.client
        cancelled = _CancelCheck()
        while True:
            cancelled.check()
            self.session.check()
            r = await client.get(self.prefix, prefix=True, keys_only=True,
                                 sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE)
            key = self.key
            if not any(kv.key == key and kv.create_revision == rev for kv in r.kvs):
                self.session.check()
                raise SessionExpired(f"{key.decode(errors='replace')} was deleted while waiting")
            before = [kv for kv in r.kvs if kv.create_revision < rev]
            if not before:
                return
            await self._wait_deleted(before[-1].key, r.revision + 1, cancelled)

    async def _wait_deleted(self, key: bytes, start_revision: int,
                            cancelled: _CancelCheck) -> None:
        """Until `key` is deleted at or after `start_revision`, the watch is compacted (the
        caller re-reads), or the session is lost (the caller's check raises)."""
        w = await self.session.client.watch(
            key, start_revision=start_revision, filters=(WatchFilter.NOPUT,)
        )
        with self.session.on_lost(w.cancel):
            if cancelled.pending():
                w.cancel()
                raise asyncio.CancelledError
            async with w:
                async for batch in w:
                    if batch.compacted or any(e.type == EventType.DELETE for e in batch.events):
                        return

    async def leave(self, rev: int) -> None:
        """Delete our key if it still has create revision `rev` (any of ours when 0)."""
        key = self.key
        if rev:
            await self.session.client.txn(Txn(
                compare=(Compare(key, CompareTarget.CREATE, CompareResult.EQUAL, rev),),
                success=(DeleteRange(key),),
            ))
        else:
            await self.session.client.delete(key)

    async def leave_in_time(self, rev: int) -> None:
        """`leave(rev)` within the session's close timeout; `DeadlineExceeded` after it."""
        try:
            await asyncio.wait_for(self.leave(rev), self.session.close_timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"deleting our key under {self.prefix.decode(errors='replace')}: no answer "
                f"within {self.session.close_timeout:g}s; it goes when the session's lease does"
            ) from None

    async def abandon(self, joining: asyncio.Future[tuple[int, KeyValue | None]],
                      timeout: float) -> None:
        """Clean up after a join that failed or was cancelled: wait for the join's request,
        then `leave` (bounded by `timeout`). Runs in its own task; never raises."""
        async def clean() -> None:
            rev = 0
            try:
                rev = (await joining)[0]
            except BaseException:  # its outcome is unknown: delete whatever key of ours is there
                rev = 0
            try:
                await asyncio.wait_for(self.leave(rev), timeout)
            except (RegistryError, TimeoutError) as e:
                log.warning("could not delete %s (%s); it goes when lease %x ends",
                            self.prefix.decode(errors="replace"), e, self.session.lease_id)

        task = asyncio.get_running_loop().create_task(clean())
        _background.add(task)
        task.add_done_callback(_background.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def enter(self, value: bytes) -> tuple[int, KeyValue | None]:
        """`join` then `wait_turn`; on any failure or cancellation, `abandon` and re-raise.
        Returns what `join` returned once we head the queue."""
        joining = asyncio.ensure_future(self.join(value))
        try:
            joined = await asyncio.shield(joining)
            await self.wait_turn(joined[0])
        except BaseException:
            await self.abandon(joining, self.session.close_timeout)
            raise
        return joined
