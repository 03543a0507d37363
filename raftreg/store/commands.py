"""The store's data types: key-values, events, commands and their results.

Commands are plain frozen dataclasses. A `Request` envelope carries one command together with the
proposer's wall-clock time (`now_ms`, the only way time enters the store) and an optional request
identity (`client_id`, `seq`) that makes retried writes apply at most once. `raftreg.store.codec`
is the single encoder/decoder between these types and msgpack bytes.

Range semantics follow etcd: `range_end == b""` selects the single `key`; `range_end == b"\\0"`
selects every key >= `key`; otherwise the half-open interval [key, range_end). An empty `key`
with `range_end == b"\\0"` selects everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int = 0


class EventType(IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For DELETE, `kv` has the key, `mod_revision` = the deleting revision, an
    empty value and version 0 (as in etcd). `prev_kv` is the value before the change, if any."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


class SortOrder(IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


# ---------------------------------------------------------------------------------------------
# Operations (usable on their own as commands, and inside a Txn)


@dataclass(frozen=True, slots=True)
class Range:
    """A read. Not a command: reads are served from the local store (after the read barrier
    for linearizable reads) but a Range may appear inside a Txn."""

    key: bytes
    range_end: bytes = b""
    revision: int = 0  # 0 = current
    limit: int = 0  # 0 = unlimited
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False
    # etcd's filters (0 = no bound), applied after the read and before sort and limit; the
    # result's count is taken before them.
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0

    @property
    def filtered(self) -> bool:
        return bool(self.min_mod_revision or self.max_mod_revision
                    or self.min_create_revision or self.max_create_revision)


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRange:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    key: bytes
    target: CompareTarget
    result: CompareResult
    # The operand: bytes for VALUE, int for the other targets.
    operand: bytes | int
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class Txn:
    compare: tuple[Compare, ...] = ()
    success: tuple[Range | Put | DeleteRange | Txn, ...] = ()
    failure: tuple[Range | Put | DeleteRange | Txn, ...] = ()


# ---------------------------------------------------------------------------------------------
# Commands that exist only at the top level


@dataclass(frozen=True, slots=True)
class Compact:
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """`id` is always non-zero here: the proposer picks one when the client did not."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    id: int


@dataclass(frozen=True, slots=True)
class LeaseExpire:
    """Decided by the leader's clock in raft term `term`; every replica revokes the
    still-existing ones, in order, each at its own revision (a lease with no keys costs no
    revision). Ignored when a newer leader has announced itself (`term` < the store's
    `leader_epoch`): a deposed leader's stale decision, possibly forwarded to the new leader
    by the consensus layer, must not expire leases the new leader is renewing."""

    ids: tuple[int, ...]
    term: int = 0


@dataclass(frozen=True, slots=True)
class LeaderEpoch:
    """A new leader's announcement, proposed before it renews or expires any lease: from its
    application on, leader-only decisions made in older terms are ignored."""

    term: int


@dataclass(frozen=True, slots=True)
class LeaseCheckpoint:
    """Persists the leader's view of remaining TTLs (ms) so a new leader can resume them."""

    remaining_ms: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ExpireClients:
    """Forget request-identity entries of clients idle since before `idle_before_ms`."""

    idle_before_ms: int


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """Records a cluster member's metadata after the consensus layer changed the membership
    (`removed=True`: the member left). Changes no key and no revision."""

    id: int
    name: str
    peer: str  # host:port of the raft port
    client: str  # host:port of the client API
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Barrier:
    """A no-op whose commit proves the proposer's log position (linearizable reads)."""


Command = (
    Put
    | DeleteRange
    | Txn
    | Compact
    | LeaseGrant
    | LeaseRevoke
    | LeaseExpire
    | LeaderEpoch
    | LeaseCheckpoint
    | ExpireClients
    | MemberUpdate
    | Barrier
)


@dataclass(frozen=True, slots=True)
class Request:
    """One replicated log item. `seq == 0` means the request carries no identity."""

    command: Command
    now_ms: int = 0
    client_id: int = 0
    seq: int = 0


# ---------------------------------------------------------------------------------------------
# Results. Every result carries the store revision after the command was applied.


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    revision: int
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Done:
    """Result of commands that return nothing but the revision (Compact, LeaseRevoke, ...)."""

    revision: int


@dataclass(frozen=True, slots=True)
class Failure:
    """A command refused at apply time; state is unchanged. `kind` names a class in
    `raftreg.errors` (e.g. "LeaseNotFound", "Compacted", "InvalidArgument")."""

    revision: int
    kind: str
    message: str
    compact_revision: int = 0


Result = RangeResult | PutResult | DeleteResult | TxnResult | LeaseGrantResult | Done | Failure


@dataclass(slots=True)
class LeaseInfo:
    """The store's (replicated) view of a lease. Deadlines are not here: only the leader keeps
    them, on its own clock. `remaining_ms` is the last checkpointed remaining TTL, or -1."""

    id: int
    ttl: int
    keys: set[bytes] = field(default_factory=set)
    remaining_ms: int = -1
