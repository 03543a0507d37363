"""raftreg's etcd backend: the `RegistryClient` protocol over a real etcd v3 cluster.

- `EtcdRegistryClient` (raftreg.client.etcd.client): the adapter; etcd's gRPC protocol with our own
  messages (protos/etcdv3.proto -> raftreg.client.etcd.pb, proto package `raftreg.etcdv3`).
- `etcd_error` (raftreg.client.etcd.errors): the one mapping of etcd's errors into `raftreg.errors`.
- `WIRE` (raftreg.client.etcd.watch_wire): etcd's messages for the shared watch stream.

Which backend a client talks to is chosen in `raftreg.client.backend_choice`.
"""

from raftreg.client.etcd.client import EtcdRegistryClient, split_etcd_endpoints
from raftreg.client.etcd.errors import etcd_error

__all__ = ["EtcdRegistryClient", "etcd_error", "split_etcd_endpoints"]
