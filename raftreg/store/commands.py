"""The state machine's own types: the replicated commands, the log envelope and the results
that only the store produces.

Commands are plain frozen dataclasses. The write operations clients build (`Put`, `DeleteRange`,
`Txn`) are public value types in `raftreg.common.types` and are commands as they are; the ones
here exist only at the top level of the log (compaction, leases, leader epochs, member
records). A `Request` envelope carries one command together with the proposer's wall-clock
time (`now_ms`, the only way time enters the store) and an optional request identity
(`client_id`, `seq`) that makes retried writes apply at most once. `raftreg.store.codec` is the
single encoder/decoder between these types and msgpack bytes.

Every result carries the store revision after the command was applied: the public ones
(`RangeResult`, `PutResult`, `DeleteResult`, `TxnResult`, `LeaseGrantResult`, in
`raftreg.common.types`), `Done` and `Failure` (a command refused at apply time, turned into an
exception by `raftreg.store.failures` before any client sees it).
"""

from __future__ import annotations

from dataclasses import dataclass

from raftreg.common.types import (
    DeleteRange,
    DeleteResult,
    LeaseGrantResult,
    Put,
    PutResult,
    RangeResult,
    Txn,
    TxnResult,
)

__all__ = [
    "Command",
    "Compact",
    "Done",
    "ExpireClients",
    "Failure",
    "LeaderEpoch",
    "LeaseCheckpoint",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseRevoke",
    "MemberUpdate",
    "Request",
    "Result",
]


# ---------------------------------------------------------------------------------------------
# Commands that exist only at the top level (besides Put, DeleteRange and Txn)



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
class LeaseCheckpoint:
    """Remaining TTLs recorded by the leader of raft term `term` (etcd's lease checkpoints):
    `(lease id, remaining ms)` pairs; -1 clears a lease's checkpoint. A later leader gives a
    checkpointed lease its remaining TTL instead of a full one. Fenced like `LeaseExpire`: ignored
    once a newer leader has announced itself, so a deposed leader's stale remaining TTL never
    shortens a lease the new leader has renewed. Missing leases are skipped."""

    checkpoints: tuple[tuple[int, int], ...]
    term: int


@dataclass(frozen=True, slots=True)
class LeaderEpoch:
    """A new leader's announcement, proposed before it renews or expires any lease: from its
    application on, leader-only decisions made in older terms are ignored."""

    term: int


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


Command = (
    Put
    | DeleteRange
    | Txn
    | Compact
    | LeaseGrant
    | LeaseRevoke
    | LeaseExpire
    | LeaseCheckpoint
    | LeaderEpoch
    | ExpireClients
    | MemberUpdate
)


@dataclass(frozen=True, slots=True)
class Request:
    """One replicated log item. `seq == 0` means the request carries no identity."""

    command: Command
    now_ms: int = 0
    client_id: int = 0
    seq: int = 0


# ---------------------------------------------------------------------------------------------
# Results only the store produces (the public ones are in raftreg.common.types)


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
