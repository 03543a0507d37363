"""Clients of the registry.

This package owns the `RegistryClient` protocol (async-first) and the value types it returns
(`LeaseTTL`, `Member`, `NodeStatus`), the raftreg gRPC implementation (`GrpcRegistryClient`:
leader-aware, failover, retried writes made safe by request identity), the blocking facade
(`SyncRegistryClient`), the in-memory implementation over the store for fast tests
(`MemoryRegistryClient`), resumable watches (`Watch`, `WatchBatch`), the lease keepalive manager
(`LeaseKeeper`), clocks (`ManualClock` for tests) and endpoint defaults (`connect`). Every
client raises only `raftreg.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raftreg.client.clock import Clock, LoopClock, ManualClock
from raftreg.client.endpoints import DEFAULT_ENDPOINT, default_endpoints, normalize_endpoint
from raftreg.client.grpc_client import GrpcRegistryClient, rpc_error
from raftreg.client.keepalive import KeepAliveSource, KeepAliveStream, LeaseKeeper
from raftreg.client.memory import MemoryRegistryClient
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    RegistryClient,
    prefix_range_end,
    to_bytes,
)
from raftreg.client.sync import SyncRegistryClient
from raftreg.client.watch import Watch, WatchBatch, WatchFilter, WatchOptions


def connect(
    endpoints: Sequence[str] | None = None,
    *,
    config_path: str | Path = "cluster.toml",
    timeout: float = 5.0,
    connect_timeout: float = 3.0,
) -> GrpcRegistryClient:
    """A gRPC client for `endpoints`; None means the client addresses in `config_path`, or
    127.0.0.1:2379 when that file does not exist. Connections open lazily on first use."""
    eps = list(endpoints) if endpoints is not None else default_endpoints(config_path)
    return GrpcRegistryClient(eps, timeout=timeout, connect_timeout=connect_timeout)


__all__ = [
    "DEFAULT_ENDPOINT",
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
    "SyncRegistryClient",
    "Watch",
    "WatchBatch",
    "WatchFilter",
    "WatchOptions",
    "connect",
    "default_endpoints",
    "normalize_endpoint",
    "prefix_range_end",
    "rpc_error",
    "to_bytes",
]
