"""The raftreg client's watch wire (`WIRE`): raftreg's messages for the shared watch stream.

`raftreg.client.watch_mux` owns the algorithm (one bidi Watch stream per client, FIFO create
matching, resume without gap or duplicate, cancels, compaction, progress, reconnect with
backoff); this module owns only what is raftreg's: the messages (`raftreg.pb`), the call on a
connection's `WatchStub`, event conversion (`raftreg.common.convert`) and the status -> exception
mapping (`raftreg.client.raftreg_client.rpc_error`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc.aio

from raftreg import errors as E
from raftreg.client.watch_mux import WatchCall, WatchWire
from raftreg.common import convert
from raftreg.pb import raftreg_pb2 as pb

if TYPE_CHECKING:
    from raftreg.client.raftreg_client import _Conn


def _open(conn: _Conn) -> WatchCall:
    return conn.watch.Watch(None)


def _error(e: grpc.aio.AioRpcError) -> E.RegistryError:
    from raftreg.client.raftreg_client import rpc_error  # raftreg_client imports this module

    return rpc_error(e)


WIRE: WatchWire[_Conn] = WatchWire(
    "watch", logging.getLogger("raftreg.client.watch"), pb, _open, convert.event_from_pb, _error
)
