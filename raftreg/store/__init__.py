"""raftreg.store — the pure, deterministic replicated state machine.

Owns: the MVCC key space (revisions, per-key history, range reads, compaction; `mvcc`), the
lease table (`lease`), the request-identity table that applies retried writes once
(`identity`), txn compares (`txn`), static command validation (`validate`), the one msgpack
codec for log entries and snapshots (`codec`), Failure <-> exception mapping (`failures`) and
the `Store` facade tying them together (`store`). The store's own commands (compaction, leases,
leader epochs, member records), the `Request` envelope and the `Done`/`Failure`
results are in `commands`. The public value types it applies and returns (`KeyValue`, `Event`,
`Put`, `DeleteRange`, `Txn`, `Compare`, `Range` and their results) are not the store's: they
live in `raftreg.common.types`, below this package, and are imported from there.

No I/O, clocks, threads, randomness or logging: time enters only as `Request.now_ms`, and the
same requests in the same order give identical state, results, events and snapshot bytes on
every replica. Everything above this package (consensus, server, api) depends on it, never
the other way round; below it are only `raftreg.errors`, `raftreg.common.types` and one
default of `raftreg.config` (`DEFAULT_CLIENT_WINDOW`).
"""

from raftreg.store.codec import decode_request, encode_request
from raftreg.store.commands import (
    Command,
    Compact,
    Done,
    ExpireClients,
    Failure,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    MemberUpdate,
    Request,
    Result,
)
from raftreg.store.failures import error_to_failure, failure_to_error
from raftreg.store.lease import LeaseInfo
from raftreg.store.store import Store, StoreView

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
    "LeaseInfo",
    "LeaseRevoke",
    "MemberUpdate",
    "Request",
    "Result",
    "Store",
    "StoreView",
    "decode_request",
    "encode_request",
    "error_to_failure",
    "failure_to_error",
]
