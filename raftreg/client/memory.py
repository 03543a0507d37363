"""`MemoryRegistryClient`: the whole `RegistryClient` protocol over an in-process `Store`.

This is the real fake for fast tests of every layer above the client (discovery, config
center, resilience helpers): the same store code the cluster replicates decides every result,
event and error, so behaviour matches the registry except for what needs a network
(failover, latency, request identities). Time is a `ManualClock` that only moves when the test
calls `advance()`.

Contracts:
- Writes are `Request(...)` envelopes applied to the store in call order; a refused write raises
  the store's `Failure` as its `raftreg.errors` exception (`failure_to_error`).
- Leases: the deadline of a lease is `last grant/renewal time + TTL` on the manual clock;
  `advance(seconds)` expires (through a `LeaseExpire` command, so watchers see the DELETE
  events) every lease whose deadline has been reached. TTLs below `min_lease_ttl` are raised to
  it, as the server does.
- Watches have the gRPC client's semantics (`raftreg.client.resumable_watch`): catch-up from
  `store.events_since(start_revision)`, then live events after every apply, whole revisions per
  batch, a compacted batch when the start is below the compaction point, progress on
  `request_progress()`.
- Fault injection: `set_unavailable(True)` makes every call (and keepalive streams) fail with
  `Unavailable` until cleared; `break_keepalive_streams()` breaks open keepalive streams.
- Single event loop, not thread-safe (wrap it in `SyncRegistryClient.wrap` for blocking use).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from raftreg.client.keepalive import LeaseKeeper
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    list_then_watch,
    resolve_range,
    to_bytes,
)
from raftreg.client.resumable_watch import Watch, WatchFilter, WatchOptions
from raftreg.common.clock import ManualClock
from raftreg.common.types import (
    DeleteRange,
    DeleteResult,
    Event,
    LeaseGrantResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)
from raftreg.errors import (
    ClientClosed,
    Compacted,
    InvalidArgument,
    NotApplied,
    Unavailable,
)
from raftreg.store import Store, failure_to_error
from raftreg.store.commands import (
    Command,
    Compact,
    Failure,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    Request,
    Result,
)

MEMBER_ID = 1


class _MemoryKeepAliveStream:
    """Answers each renewal at once, from the client's lease table."""

    def __init__(self, client: MemoryRegistryClient) -> None:
        self._client = client
        self._answers: asyncio.Queue[tuple[int, int] | Unavailable] = asyncio.Queue()
        self.closed = False

    @property
    def endpoint(self) -> str:
        return self._client.endpoints[0]

    def send(self, lease_ids: Sequence[int]) -> None:
        if self.closed:
            return
        if self._client.unavailable:
            self.fail(Unavailable("memory registry is unavailable"))
            return
        for lease_id in lease_ids:
            self._answers.put_nowait((lease_id, self._client._renew(lease_id)))

    def fail(self, err: Unavailable) -> None:
        self._answers.put_nowait(err)

    async def recv(self) -> tuple[int, int]:
        item = await self._answers.get()
        if isinstance(item, Unavailable):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True
        self._client._ka_streams.discard(self)


class MemoryRegistryClient:
    """An in-memory `RegistryClient` over `raftreg.store.Store`; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        clock: ManualClock | None = None,
        min_lease_ttl: int = 1,
        seed: int | None = None,
        endpoint: str = "memory:0",
    ) -> None:
        self._store = store if store is not None else Store()
        self._clock = clock if clock is not None else ManualClock()
        self._min_ttl = min_lease_ttl
        self._rng = random.Random(seed)
        self._endpoint = endpoint
        self._deadlines: dict[int, float] = {}
        self._watches: dict[int, Watch] = {}
        self._ka_streams: set[_MemoryKeepAliveStream] = set()
        self._keeper: LeaseKeeper | None = None
        self._unavailable = False
        self._closed = False

    # ------------------------------------------------------------------ test controls

    @property
    def store(self) -> Store:
        return self._store

    @property
    def clock(self) -> ManualClock:
        return self._clock

    @property
    def unavailable(self) -> bool:
        return self._unavailable

    def set_unavailable(self, unavailable: bool = True) -> None:
        """While set, every call raises `Unavailable` and keepalive streams break."""
        self._unavailable = unavailable
        if unavailable:
            self.break_keepalive_streams()

    def break_keepalive_streams(self) -> None:
        for st in list(self._ka_streams):
            st.fail(Unavailable("keepalive stream broken"))
        self._ka_streams.clear()

    def advance(self, seconds: float) -> list[int]:
        """Move the manual clock forward; expire (with DELETE events for their keys) every
        lease whose deadline has been reached. Returns the expired lease ids."""
        self._clock.advance(seconds)
        now = self._clock.now()
        due = sorted(
            lease.id for lease in self._store.leases() if self._deadline(lease.id) <= now
        )
        if due:
            self._apply(LeaseExpire(tuple(due)))
            for i in due:
                self._deadlines.pop(i, None)
        return due

    @property
    def watch_count(self) -> int:
        return sum(1 for w in self._watches.values() if not w.done)

    # ------------------------------------------------------------------ internals

    def _check(self) -> None:
        if self._closed:
            raise ClientClosed("client is closed")
        if self._unavailable:
            raise NotApplied("memory registry is unavailable")

    def _apply(self, command: Command) -> Result:
        result, events = self._store.apply(
            Request(command, now_ms=int(self._clock.now() * 1000))
        )
        if isinstance(result, Failure):
            raise failure_to_error(result)
        if events:
            self._publish(result.revision, events)
        return result

    def _publish(self, revision: int, events: list[Event]) -> None:
        for wid, w in list(self._watches.items()):
            if w.done:
                del self._watches[wid]
                continue
            selected = _select(w.options, events)
            if selected:
                w._on_events(revision, selected)

    def _deadline(self, lease_id: int) -> float:
        d = self._deadlines.get(lease_id)
        if d is None:  # a lease from a given store: its TTL starts when first seen
            lease = self._store.lease(lease_id)
            ttl = lease.ttl if lease is not None else 0
            d = self._deadlines[lease_id] = self._clock.now() + ttl
        return d

    def _renew(self, lease_id: int) -> int:
        lease = self._store.lease(lease_id)
        if lease is None or self._deadline(lease_id) <= self._clock.now():
            return 0
        self._deadlines[lease_id] = self._clock.now() + lease.ttl
        return lease.ttl

    # ------------------------------------------------------------------ KV

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self._endpoint,)

    async def get(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
    ) -> RangeResult:
        self._check()
        k, end = resolve_range(key, range_end, prefix)
        return self._store.range(
            Range(k, end, revision, limit, sort_order, sort_target, keys_only, count_only)
        )

    async def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        self._check()
        r = self._apply(Put(to_bytes(key), to_bytes(value), lease, prev_kv))
        assert isinstance(r, PutResult)
        return r

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        self._check()
        k, end = resolve_range(key, range_end, prefix)
        r = self._apply(DeleteRange(k, end, prev_kv))
        assert isinstance(r, DeleteResult)
        return r

    async def txn(self, txn: Txn) -> TxnResult:
        self._check()
        r = self._apply(txn)
        assert isinstance(r, TxnResult)
        return r

    async def compact(self, revision: int) -> int:
        self._check()
        return self._apply(Compact(revision)).revision

    # ------------------------------------------------------------------ leases

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        self._check()
        if ttl <= 0:
            raise InvalidArgument("lease TTL must be positive")
        lease_id = id or self._rng.getrandbits(62) + 1
        r = self._apply(LeaseGrant(lease_id, max(ttl, self._min_ttl)))
        assert isinstance(r, LeaseGrantResult)
        self._deadlines[r.id] = self._clock.now() + r.ttl
        return r

    async def lease_revoke(self, id: int) -> None:
        self._check()
        self._apply(LeaseRevoke(id))
        self._deadlines.pop(id, None)

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL:
        self._check()
        lease = self._store.lease(id)
        if lease is None:
            return LeaseTTL(id, -1, 0)
        left = max(0, math.ceil(self._deadline(id) - self._clock.now()))
        return LeaseTTL(id, left, lease.ttl, tuple(sorted(lease.keys)) if keys else ())

    async def lease_list(self) -> list[int]:
        self._check()
        return [lease.id for lease in self._store.leases()]

    async def lease_keepalive_once(self, id: int) -> int:
        self._check()
        return self._renew(id)

    async def open_keepalive_stream(self) -> _MemoryKeepAliveStream:
        self._check()
        st = _MemoryKeepAliveStream(self)
        self._ka_streams.add(st)
        return st

    def keepalive_manager(self) -> LeaseKeeper:
        if self._closed:
            raise ClientClosed("client is closed")
        if self._keeper is None:
            self._keeper = LeaseKeeper(self, clock=self._clock)
        return self._keeper

    # ------------------------------------------------------------------ watches

    async def watch(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter | int] = (),
        progress_notify: bool = False,
    ) -> Watch:
        self._check()
        k, end = resolve_range(key, range_end, prefix)
        options = WatchOptions.make(
            k,
            end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )
        w = Watch(options, self._cancel_watch)
        rev = self._store.revision
        if start_revision == 0:
            w._on_created(rev)
        else:
            try:
                history = self._store.events_since(start_revision, options.key, options.range_end)
            except Compacted as e:
                w._on_compacted(e.compact_revision, rev)
                return w
            w._on_created(rev)
            selected = _select(options, history)
            if selected:
                w._on_events(rev, selected)
        self._watches[w.watch_id] = w
        return w

    def _cancel_watch(self, w: Watch) -> None:
        self._watches.pop(w.watch_id, None)

    async def list_then_watch(
        self, prefix: KeyLike, *, prev_kv: bool = False, progress_notify: bool = False
    ) -> tuple[RangeResult, Watch]:
        return await list_then_watch(self, prefix, prev_kv=prev_kv,
                                     progress_notify=progress_notify)

    async def request_progress(self) -> None:
        self._check()
        for w in list(self._watches.values()):
            w._on_progress(self._store.revision)

    # ------------------------------------------------------------------ cluster

    async def member_list(self) -> list[Member]:
        self._check()
        return [
            Member(
                MEMBER_ID,
                "memory",
                (),
                (f"memory://{self._endpoint}",),
                is_leader=True,
                connected=True,
            )
        ]

    async def status(self, endpoint: str | None = None, *, with_hash: bool = False) -> NodeStatus:
        self._check()
        st = self._store
        return NodeStatus(
            endpoint=endpoint or self._endpoint,
            member_id=MEMBER_ID,
            leader=MEMBER_ID,
            is_leader=True,
            name="memory",
            revision=st.revision,
            keys=st.key_count(),
            leases=len(st.leases()),
            watchers=self.watch_count,
            compact_revision=st.compact_revision,
            hash=st.hash() if with_hash else 0,
        )

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.close()
        self.break_keepalive_streams()
        for w in list(self._watches.values()):
            w._on_closed()
        self._watches.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _select(options: WatchOptions, events: Iterable[Event]) -> list[Event]:
    """The events a watch with `options` receives (prev_kv stripped unless asked for)."""
    return [
        e if options.prev_kv or e.prev_kv is None else Event(e.type, e.kv, None)
        for e in events
        if options.selects(e)
    ]
