"""The `RegistryClient` protocol and the small value types it returns.

Every implementation (the raftreg gRPC client, the etcd adapter, the in-memory one) satisfies
this protocol and raises only `raftreg.errors` exceptions, so callers never depend on a backend.

Keys and values accept `str | bytes`; a `str` is encoded as UTF-8. Results are the store's own
domain types (`RangeResult`, `PutResult`, ...) so the same objects flow through every layer.
Range selection follows etcd: `range_end == b""` is the single key, `b"\\0"` every key >= key,
otherwise the half-open [key, range_end); `prefix=True` derives range_end with
`raftreg.common.keys.prefix_range_end`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, runtime_checkable

from raftreg.client.resumable_watch import Watch, WatchFilter
from raftreg.common.keys import prefix_range_end
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
from raftreg.errors import InvalidArgument

if TYPE_CHECKING:
    from raftreg.client.keepalive import LeaseKeeper

KeyLike = str | bytes


def to_bytes(value: KeyLike) -> bytes:
    """`value` as bytes; `str` is encoded as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(f"expected str or bytes, got {type(value).__name__}")


def resolve_range(key: KeyLike, range_end: KeyLike, prefix: bool) -> tuple[bytes, bytes]:
    """(key, range_end) as bytes; `prefix=True` derives range_end and excludes an explicit one."""
    k = to_bytes(key)
    end = to_bytes(range_end)
    if prefix:
        if end:
            raise InvalidArgument("give either prefix=True or a range_end, not both")
        end = prefix_range_end(k)
    return k, end


T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class LeaseTTL:
    """A lease's remaining time. `ttl == -1` means the lease does not exist (any more)."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member as seen by the node that answered. `client_urls` are as advertised
    (e.g. "http://127.0.0.1:2379")."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False
    is_leader: bool = False
    connected: bool = False


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The status of the node at `endpoint`. `leader` is the leader's member id (0 = none
    known); `is_leader` is `member_id == leader`. `errors` lists the node's own complaints
    (e.g. "no leader")."""

    endpoint: str
    member_id: int
    leader: int
    is_leader: bool
    name: str = ""
    version: str = ""
    revision: int = 0
    raft_term: int = 0
    raft_index: int = 0
    applied_index: int = 0
    db_size: int = 0
    db_size_in_use: int = 0
    keys: int = 0
    leases: int = 0
    watchers: int = 0
    compact_revision: int = 0
    hash: int = 0
    is_learner: bool = False
    errors: tuple[str, ...] = ()


@runtime_checkable
class RegistryClient(Protocol):
    """An async client of an etcd-style registry.

    Contract: every method raises only `raftreg.errors.RegistryError` subclasses. A write that
    may or may not have been applied raises `OutcomeUnknown`, never a plain failure.
    """

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints ("host:port") this client talks to."""
        ...

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
        """Read a key or range. Linearizable unless `serializable=True` (then possibly stale,
        served by any node)."""
        ...

    async def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult: ...

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult: ...

    async def txn(self, txn: Txn) -> TxnResult: ...

    async def compact(self, revision: int) -> int:
        """Discard history below `revision`; returns the header revision."""
        ...

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        """Grant a lease of `ttl` seconds; `id=0` lets the server pick the id."""
        ...

    async def lease_revoke(self, id: int) -> None:
        """Revoke a lease and delete its keys; `LeaseNotFound` if it does not exist."""
        ...

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL: ...

    async def lease_list(self) -> list[int]: ...

    async def lease_keepalive_once(self, id: int) -> int:
        """Renew a lease once; returns the new remaining TTL, 0 when the lease is lost."""
        ...

    # --- watches (see raftreg.client.resumable_watch for the guarantees) ----------------------

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
        """Watch a key or range from `start_revision` (0 = changes after now). Returns once the
        server confirmed the watch (a put made after this returns is seen); the `Watch` then
        survives failures with no gap and no duplicate until cancelled, compacted or the
        client is closed. Raises `InvalidArgument` for a refused watch, `Unavailable` if no
        server confirmed it within the client's retry budget."""
        ...

    async def list_then_watch(
        self, prefix: KeyLike, *, prev_kv: bool = False, progress_notify: bool = False
    ) -> tuple[RangeResult, Watch]:
        """A linearizable snapshot of every key under `prefix`, and a watch of every change
        after it (from snapshot.revision + 1)."""
        ...

    async def request_progress(self) -> None:
        """Ask the server to report progress on every watch: watches created with
        `progress_notify=True` then yield a `WatchBatch(progress=True)`; all of them advance
        their resume point. A no-op while no watch stream is open."""
        ...

    # --- leases kept alive -------------------------------------------------------------------

    def keepalive_manager(self) -> LeaseKeeper:
        """This client's one `LeaseKeeper` (created on first use, closed by `close()`)."""
        ...

    async def member_list(self) -> list[Member]: ...

    async def status(self, endpoint: str | None = None, *, with_hash: bool = False) -> NodeStatus:
        """The status of `endpoint`, or of any reachable endpoint when None. `hash` is 0
        unless `with_hash` (computing it reads every key on the server)."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent; later calls raise `FailedPrecondition`."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LoopRunner(Protocol):
    """A blocking facade's view for the blocking recipes (`raftreg.concurrency.sync`,
    `raftreg.discovery.sync`): an async `RegistryClient` living on a private event loop, and
    `run`, which runs a coroutine on that loop from another thread and waits for its result.
    `raftreg.client.SyncRegistryClient` is one; typed structurally, so no recipe depends on a
    concrete client."""

    @property
    def client(self) -> RegistryClient: ...

    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...


async def list_then_watch(
    client: RegistryClient, prefix: KeyLike, *, prev_kv: bool = False,
    progress_notify: bool = False,
) -> tuple[RangeResult, Watch]:
    """`RegistryClient.list_then_watch`, written once for every client: a linearizable range of
    `prefix`, then a watch from the revision after it, so no change is missed or seen twice."""
    snapshot = await client.get(prefix, prefix=True)
    w = await client.watch(
        prefix, prefix=True, start_revision=snapshot.revision + 1, prev_kv=prev_kv,
        progress_notify=progress_notify,
    )
    return snapshot, w
