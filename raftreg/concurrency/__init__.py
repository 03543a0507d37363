"""Distributed locks and leader election on any `RegistryClient` (etcd's clientv3/concurrency).

This package owns the coordination recipes built on leases, transactions and watches, written
against the `RegistryClient` protocol and `raftreg.errors` only, so they run unchanged on
raftreg, on a real etcd and on `MemoryRegistryClient`:

- `Session`: one lease kept alive by the client's one `LeaseKeeper`; it is *lost* when the
  keeper gives the lease up (expired, revoked, or no renewal acknowledged within its TTL) and
  `close()` revokes it.
- `Lock`: etcd's Mutex. A waiter's key is `<name>/<lease id in hex>` under the session's lease;
  the holder is the key with the lowest create revision under `<name>/`; `acquire()` returns a
  fencing token (the key's create revision, strictly increasing from holder to holder).
- `Election`: etcd's Election over the same queue: `campaign`, `proclaim`, `resign`, `leader`,
  `observe`.
- `SyncSession`, `SyncLock`, `SyncElection`: blocking counterparts over a
  `SyncRegistryClient`'s event loop (usable from any number of threads).

The key layout and algorithm are etcd's, so a `Lock`/`Election` over the etcd backend and
`etcdctl lock`/`etcdctl elect` with the same name exclude each other.

Safety is lease-based, as in etcd: a holder is excluded from the moment its key is deleted
(release, lease revoked or expired). A holder that stalls for longer than its TTL may still
believe it holds the lock after another took it: guard the protected resource with the
fencing token (`Lock.revision`, or the compare from `Lock.owner_compare()` in a `Txn`).
"""

from __future__ import annotations

from raftreg.concurrency.election import Election, LeaderObserver, leader, observe
from raftreg.concurrency.errors import NotLeader, SessionExpired
from raftreg.concurrency.lock import Lock
from raftreg.concurrency.session import DEFAULT_SESSION_TTL, Session
from raftreg.concurrency.sync import SyncElection, SyncLock, SyncSession

__all__ = [
    "DEFAULT_SESSION_TTL",
    "Election",
    "LeaderObserver",
    "Lock",
    "NotLeader",
    "Session",
    "SessionExpired",
    "SyncElection",
    "SyncLock",
    "SyncSession",
    "leader",
    "observe",
]
