"""grpc.aio servicers for raftreg.v1 over a `RegistryNode`, one module per gRPC service.

Every handler is wrapped by `base.rpc`, the single place where a `RegistryError` becomes a
gRPC status, through the servicer's `status_for` (`raftreg.common.status`: raftreg's wording,
or etcd's when the servicer serves etcd's service names, see `raftreg.api.etcd`). Handlers
only convert and delegate; they hold no state.

Modules: `base` (the error wrapper and what every servicer shares), `kv` (KV and Batch),
`lease`, `watch`, `cluster`, `maintenance`, `auth`.
"""

from raftreg.api.servicers.auth import AuthServicer
from raftreg.api.servicers.cluster import ClusterServicer
from raftreg.api.servicers.kv import KVServicer
from raftreg.api.servicers.lease import LeaseServicer
from raftreg.api.servicers.maintenance import MaintenanceServicer
from raftreg.api.servicers.watch import WatchServicer

__all__ = [
    "AuthServicer",
    "ClusterServicer",
    "KVServicer",
    "LeaseServicer",
    "MaintenanceServicer",
    "WatchServicer",
]
