"""The etcd adapter's watch wire (`WIRE`): etcd's Watch messages for the shared watch stream.

`raftreg.client.watch_mux` owns the algorithm (one bidi Watch stream per client, FIFO create
matching, resume without gap or duplicate, cancels, compaction, progress, reconnect with
backoff) and the caller-facing object is raftreg's own `raftreg.client.resumable_watch.Watch`, so
watches have the same guarantees on both backends. This module owns only what is etcd's:
the request messages (`raftreg.client.etcd.pb`), the call on etcd's method path with the
"hasleader" metadata, event conversion and etcd's error mapping. etcd specifics:
- etcd picks watch ids (we send watch_id 0) and answers the creates of one stream in order,
  each with a `created` response before any event of that watch: creates are matched FIFO.
- etcd reports a start revision below the compaction point as `created`, then `canceled` with
  `compact_revision > 0`: the watch ends with one compacted batch.
- Progress answers to `request_progress` carry watch_id -1 and apply to every watch.
  Known etcd 3.5.1 limitation: such an answer may be sent before events of an unsynced
  watcher (fixed in later etcd releases); the `Watch` still delivers those events, and at
  worst a re-create after a stream failure could resume past them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from raftreg.client.etcd.errors import rpc_error
from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.client.watch_mux import WatchCall, WatchWire
from raftreg.common.convert import event_from_pb

if TYPE_CHECKING:
    from raftreg.client.etcd.client import EtcdConn

WATCH_PATH = "/etcdserverpb.Watch/Watch"

# etcd's clientv3 sends this on watch and keepalive streams: the member then ends the stream
# when it has no leader instead of keeping a caller on a partitioned member.
REQUIRE_LEADER: tuple[tuple[str, str], ...] = (("hasleader", "true"),)


def _open(conn: EtcdConn) -> WatchCall:
    return conn.watch(None, metadata=REQUIRE_LEADER)


WIRE: WatchWire[EtcdConn] = WatchWire(
    "etcd watch", logging.getLogger("raftreg.client.etcd.watch"), pb, _open, event_from_pb,
    rpc_error,
)
