"""Clients of the registry.

This package owns the `RegistryClient` protocol (async-first) and the value types it returns
(`LeaseTTL`, `Member`, `NodeStatus`), the raftreg gRPC implementation (`GrpcRegistryClient`:
leader-aware, failover, retried writes made safe by request identity), the blocking facade
(`SyncRegistryClient`), the in-memory implementation over the store for fast tests
(`MemoryRegistryClient`), resumable watches (`Watch`, `WatchBatch`), the lease keepalive manager
(`LeaseKeeper`), TLS and token settings (`ClientSecurity`), clocks (`ManualClock` for tests)
and `connect`, which picks the backend (raftreg, or a real etcd through
`raftreg.client.etcd.EtcdRegistryClient`) from configuration. Every client raises only
`raftreg.errors` exceptions. The two gRPC clients (`raftreg_client`, `etcd.client`) share one
implementation of their mechanisms: `endpoint_pool` (endpoints, failure marks, connection
waits, backoff), `watch_mux` (the shared watch stream; each backend supplies a `WatchWire`:
`raftreg_watch_wire`, `etcd.watch_wire`), `bidi` (stream writer, keepalive stream) and
`pooled_client` (`PooledClient`: the one call loop and everything else the clients share).
`seq_window` (`SeqWindow`) is the raftreg client's write flow control: which request-id seq a
write may take, so that the server can still deduplicate every retry.
`resumable_watch` is the caller's `Watch`, the same for every backend; `mirror`
(`PrefixMirror`) is the list-then-watch-relist loop that keeps a caller's copy of a prefix
(the resolver's, the config watcher's); `backend_choice` picks the backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raftreg.client.endpoints import DEFAULT_ENDPOINT, default_endpoints, normalize_endpoint
from raftreg.client.keepalive import KeepAliveSource, KeepAliveStream, LeaseKeeper
from raftreg.client.memory import MemoryRegistryClient
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    RegistryClient,
    to_bytes,
)
from raftreg.client.raftreg_client import GrpcRegistryClient, rpc_error
from raftreg.client.resumable_watch import Watch, WatchBatch, WatchFilter, WatchOptions
from raftreg.client.security import ClientSecurity, endpoints_want_tls
from raftreg.client.sync import SyncRegistryClient, SyncWatch
from raftreg.common.clock import Clock, LoopClock, ManualClock, SteppingClock
from raftreg.common.keys import prefix_range_end
from raftreg.errors import InvalidArgument


def connect(
    endpoints: Sequence[str] | str | None = None,
    *,
    config_path: str | Path = "cluster.toml",
    timeout: float = 5.0,
    connect_timeout: float = 3.0,
    retry_budget: float | None = None,
    backend: str | None = None,
    tls: bool | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    token: str | None = None,
) -> RegistryClient:
    """A client of the configured backend. The backend and endpoints are chosen by
    `raftreg.client.backend_choice.select_backend`: a scheme in `endpoints` ("etcd://a:2379,b:2379"),
    then `backend`, then RAFTREG_BACKEND / RAFTREG_ENDPOINTS, then the [registry] table of
    `config_path`; by default raftreg (`GrpcRegistryClient`) at the client addresses in
    `config_path`, or 127.0.0.1:2379 when that file does not exist. The etcd backend is
    `raftreg.client.etcd.EtcdRegistryClient`. Connections open lazily on first use.

    Security (`raftreg.client.security.ClientSecurity.resolve`): each of `ca_file`,
    `cert_file`, `key_file`, `token` not given comes from RAFTREG_CACERT, RAFTREG_CERT,
    RAFTREG_KEY, RAFTREG_TOKEN; TLS is on with `tls=True`, with any of the files, or when the
    chosen endpoints are written https://. The etcd backend takes TLS but no token.
    `retry_budget` bounds a call with its retries (None: the client's default)."""
    from raftreg.client.backend_choice import select_backend

    sel = select_backend(endpoints, config_path=config_path, backend=backend)
    sec = ClientSecurity.resolve(
        tls=tls or endpoints_want_tls(endpoints, config_path=config_path, env=os.environ),
        ca_file=ca_file, cert_file=cert_file, key_file=key_file, token=token, env=os.environ,
    )
    if sel.backend == "etcd":
        from raftreg.client.etcd.client import EtcdRegistryClient

        if sec.token:
            raise InvalidArgument("the etcd backend does not support token authentication")
        return EtcdRegistryClient(
            sel.endpoints, timeout=timeout, connect_timeout=connect_timeout,
            retry_budget=retry_budget, tls=sec.tls, ca_file=sec.ca_file, cert_file=sec.cert_file,
            key_file=sec.key_file,
        )
    return GrpcRegistryClient(
        list(sel.endpoints), timeout=timeout, connect_timeout=connect_timeout,
        retry_budget=retry_budget, tls=sec.tls, ca_file=sec.ca_file, cert_file=sec.cert_file,
        key_file=sec.key_file, token=sec.token,
    )


def connect_sync(
    endpoints: Sequence[str] | str | None = None, **options: Any
) -> SyncRegistryClient:
    """`connect(endpoints, **options)` behind the blocking facade: the same backend selection,
    TLS and token options, for code without an event loop (Flask, Django, scripts). The client
    is built on the facade's own loop thread."""
    return SyncRegistryClient.wrap(lambda: connect(endpoints, **options))


__all__ = [
    "DEFAULT_ENDPOINT",
    "ClientSecurity",
    "Clock",
    "GrpcRegistryClient",
    "KeepAliveSource",
    "KeepAliveStream",
    "KeyLike",
    "LeaseKeeper",
    "LeaseTTL",
    "LoopClock",
    "ManualClock",
    "Member",
    "MemoryRegistryClient",
    "NodeStatus",
    "RegistryClient",
    "SteppingClock",
    "SyncRegistryClient",
    "SyncWatch",
    "Watch",
    "WatchBatch",
    "WatchFilter",
    "WatchOptions",
    "connect",
    "connect_sync",
    "default_endpoints",
    "normalize_endpoint",
    "prefix_range_end",
    "rpc_error",
    "to_bytes",
]
