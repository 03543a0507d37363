"""The public value types: key-values, events, the operations of a txn and their results.

What a client sends and sees, on every backend (raftreg's gRPC API, the in-memory client over
the state machine, a real etcd): `raftreg.common.convert` maps them to and from protobuf, and
the state machine (`raftreg.store`) applies `Put`, `DeleteRange` and `Txn` as commands and
returns these results. Plain frozen dataclasses and enums; this module imports nothing but the
standard library.

Range semantics follow etcd: `range_end == b""` selects the single `key`; `range_end == b"\\0"`
selects every key >= `key`; otherwise the half-open interval [key, range_end). An empty `key`
with `range_end == b"\\0"` selects everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "Compare",
    "CompareResult",
    "CompareTarget",
    "DeleteRange",
    "DeleteResult",
    "Event",
    "EventType",
    "KeyValue",
    "LeaseGrantResult",
    "Put",
    "PutResult",
    "Range",
    "RangeResult",
    "SortOrder",
    "SortTarget",
    "Txn",
    "TxnResult",
]


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
# Operations usable inside a Txn (Put, DeleteRange and Txn are also the store's write commands)


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

