"""`SyncRegistryClient`: a blocking facade over any async `RegistryClient`.

The async client lives on a private event loop in a daemon thread; each method submits a
coroutine with `asyncio.run_coroutine_threadsafe` and waits for it. Safe to call from plain
scripts and from several threads at once (calls are serialised onto that one loop). Must not be
called from the private loop itself. `close()` closes the client, stops the loop and joins the
thread; it is idempotent.

Beyond the request methods: `watch()` returns a `SyncWatch`, a blocking iterator of
`WatchBatch` with the async watch's guarantees; `keep_alive(lease_id, ttl)` hands a lease to
the client's one `LeaseKeeper` (renewed in the background until `forget` or close). Build one
with `raftreg.client.connect_sync(...)`, which takes `connect`'s options (backend, TLS, token).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from raftreg.client.protocol import KeyLike, LeaseTTL, Member, NodeStatus, RegistryClient
from raftreg.client.raftreg_client import GrpcRegistryClient
from raftreg.client.resumable_watch import Watch, WatchBatch
from raftreg.common.types import (
    DeleteResult,
    LeaseGrantResult,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)
from raftreg.errors import ClientClosed

T = TypeVar("T")


class SyncRegistryClient:
    """Blocking counterpart of `RegistryClient`: the same methods, without `await`.

    `SyncRegistryClient(endpoints, ...)` wraps a `GrpcRegistryClient` with those options;
    `SyncRegistryClient.wrap(factory)` wraps any client built by `factory` (called on the
    private loop, so it may create loop-bound resources).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retry_budget: float | None = None,
    ) -> None:
        eps = list(endpoints)
        self._start(
            lambda: GrpcRegistryClient(
                eps, timeout=timeout, connect_timeout=connect_timeout, retry_budget=retry_budget
            )
        )

    @classmethod
    def wrap(cls, factory: Callable[[], RegistryClient]) -> SyncRegistryClient:
        self = cls.__new__(cls)
        self._start(factory)
        return self

    def _start(self, factory: Callable[[], RegistryClient]) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="raftreg-sync-client", daemon=True
        )
        self._thread.start()

        async def make() -> RegistryClient:
            return factory()

        try:
            self._client: RegistryClient = asyncio.run_coroutine_threadsafe(
                make(), self._loop
            ).result()
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _stop_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this facade's event loop (where `client` lives) and wait for its
        result, from any thread but that loop's; how the blocking recipes
        (`raftreg.concurrency.sync`) use the async client."""
        return self._run(coro)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClientClosed("client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncRegistryClient called from its own event loop")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    @property
    def client(self) -> RegistryClient:
        """The wrapped async client (use it only on this facade's loop)."""
        return self._client

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._client.endpoints

    def get(
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
        return self._run(
            self._client.get(
                key,
                range_end=range_end,
                prefix=prefix,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
                serializable=serializable,
                sort_order=sort_order,
                sort_target=sort_target,
            )
        )

    def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        return self._run(self._client.put(key, value, lease=lease, prev_kv=prev_kv))

    def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        return self._run(
            self._client.delete(key, range_end=range_end, prefix=prefix, prev_kv=prev_kv)
        )

    def txn(self, txn: Txn) -> TxnResult:
        return self._run(self._client.txn(txn))

    def compact(self, revision: int) -> int:
        return self._run(self._client.compact(revision))

    def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        return self._run(self._client.lease_grant(ttl, id=id))

    def lease_revoke(self, id: int) -> None:
        self._run(self._client.lease_revoke(id))

    def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL:
        return self._run(self._client.lease_time_to_live(id, keys=keys))

    def lease_list(self) -> list[int]:
        return self._run(self._client.lease_list())

    def lease_keepalive_once(self, id: int) -> int:
        return self._run(self._client.lease_keepalive_once(id))

    def watch(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> SyncWatch:
        """`RegistryClient.watch`, as a blocking iterator (returns once the server confirmed
        the watch)."""
        w = self._run(self._client.watch(
            key, range_end=range_end, prefix=prefix, start_revision=start_revision,
            prev_kv=prev_kv, progress_notify=progress_notify))
        return SyncWatch(self, w)

    def keep_alive(self, lease_id: int, ttl: int,
                   on_lost: Callable[[int], None] | None = None) -> None:
        """Keep `lease_id` (granted with `ttl` seconds) alive in the background. `on_lost(id)`
        runs on the client's loop thread if the lease is lost: keep it short."""

        async def keep() -> None:
            self._client.keepalive_manager().keep(lease_id, ttl, on_lost)

        self._run(keep())

    def forget(self, lease_id: int) -> None:
        """Stop keeping `lease_id` alive (it then expires after its TTL, or revoke it)."""

        async def forget() -> None:
            self._client.keepalive_manager().forget(lease_id)

        self._run(forget())

    def member_list(self) -> list[Member]:
        return self._run(self._client.member_list())

    def status(self, endpoint: str | None = None) -> NodeStatus:
        return self._run(self._client.status(endpoint))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._run(self._client.close())
            finally:
                self._closed = True
                self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncWatch:
    """A blocking iterator over an async `Watch` living on a `SyncRegistryClient`'s loop.
    `next(w)` waits for the next `WatchBatch`; `w.next(timeout)` raises `TimeoutError` if none
    came in time (the watch carries on). Iteration ends when the watch ends (compacted,
    cancelled, client closed); `cancel()` (or leaving a `with` block) ends it."""

    def __init__(self, owner: SyncRegistryClient, watch: Watch) -> None:
        self._owner = owner
        self._watch = watch

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchBatch:
        return self.next()

    def next(self, timeout: float | None = None) -> WatchBatch:
        async def one() -> WatchBatch | None:
            try:
                return await asyncio.wait_for(anext(self._watch), timeout)
            except StopAsyncIteration:
                return None

        batch = self._owner.run(one())
        if batch is None:
            raise StopIteration
        return batch

    def cancel(self) -> None:
        async def cancel() -> None:
            self._watch.cancel()

        self._owner.run(cancel())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
