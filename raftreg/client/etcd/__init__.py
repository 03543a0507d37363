"""raftreg's etcd backend: the `RegistryClient` protocol over a real etcd v3 cluster.

- `EtcdRegistryClient` (raftreg.client.etcd.client): the adapter; etcd's gRPC protocol with our own
  messages (protos/etcdv3.proto -> raftreg.client.etcd.pb, proto package `raftreg.etcdv3`).
- `etcd_error` (raftreg.client.etcd.errors): the one mapping of etcd's errors into `raftreg.errors`.
- `select_backend` (raftreg.client.etcd.backend): backend choice by endpoint scheme ("etcd://..."),
  environment (RAFTREG_BACKEND / RAFTREG_ENDPOINTS) or the [registry] table of cluster.toml.
"""

from raftreg.client.etcd.backend import (
    BACKENDS,
    ENV_BACKEND,
    ENV_ENDPOINTS,
    Selection,
    select_backend,
)
from raftreg.client.etcd.client import EtcdRegistryClient, split_etcd_endpoints
from raftreg.client.etcd.errors import etcd_error

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "ENV_ENDPOINTS",
    "EtcdRegistryClient",
    "Selection",
    "etcd_error",
    "select_backend",
    "split_etcd_endpoints",
]
