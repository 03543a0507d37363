"""raftreg.store — the pure, deterministic replicated state machine.

Owns: the MVCC key space (revisions, per-key history, range reads, compaction; `mvcc`), the
lease table (`lease`), the request-identity table that applies retried writes once
(`identity`), txn compares (`txn`), static command validation (`validate`), the one msgpack
codec for log entries and snapshots (`codec`), Failure <-> exception mapping (`failures`) and
the `Store` facade tying them together (`store`). Command and result types are in `commands`.

No I/O, clocks, threads, randomness or logging: time enters only as `Request.now_ms`, and the
same requests in the same order give identical state, results, events and snapshot bytes on
every replica. Everything above this package (consensus, server, api) depends on it, never
the other way round.
"""

from raftreg.store.codec import decode_batch, decode_request, encode_batch, encode_request
from raftreg.store.commands import (
    Barrier,
    Command,
    Compact,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    Done,
    Event,
    EventType,
    ExpireClients,
    Failure,
    KeyValue,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGrantResult,
    LeaseInfo,
    LeaseRevoke,
    MemberUpdate,
    Put,
    PutResult,
    Range,
    RangeResult,
    Request,
    Result,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)
from raftreg.store.failures import error_to_failure, failure_to_error
from raftreg.store.store import Store

__all__ = [
    "Barrier",
    "Command",
    "Compact",
    "Compare",
    "CompareResult",
    "CompareTarget",
    "DeleteRange",
    "DeleteResult",
    "Done",
    "Event",
    "EventType",
    "ExpireClients",
    "Failure",
    "KeyValue",
    "LeaderEpoch",
    "LeaseCheckpoint",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseGrantResult",
    "LeaseInfo",
    "LeaseRevoke",
    "MemberUpdate",
    "Put",
    "PutResult",
    "Range",
    "RangeResult",
    "Request",
    "Result",
    "SortOrder",
    "SortTarget",
    "Store",
    "Txn",
    "TxnResult",
    "decode_batch",
    "decode_request",
    "encode_batch",
    "encode_request",
    "error_to_failure",
    "failure_to_error",
]
