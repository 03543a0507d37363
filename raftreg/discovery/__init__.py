"""Service registration, discovery and client-side load balancing, on the `RegistryClient`
protocol only (so it runs unchanged on raftreg or a real etcd).

This package owns the instance record and key layout (`instance`: `/services/<service>/<id>` ->
JSON), keeping an instance registered under a lease (`registration.Registration`), the local cache
of a service's live instances kept by list-then-watch (`resolver.Resolver`), the balancing
policies (`balancer`), passive outlier detection (`outlier.OutlierDetector`), per-call
balanced gRPC calls over one channel per live instance (`channels.ServiceChannels`), and the
blocking `SyncRegistration` / `SyncResolver` for code without an event loop (`sync`).
"""

from raftreg.discovery.balancer import POLICIES, Balancer, make_balancer
from raftreg.discovery.channels import NoInstance, Picked, ServiceChannels
from raftreg.discovery.instance import (
    SERVICES_ROOT,
    Instance,
    InvalidInstance,
    decode_instance,
    encode_instance,
    instance_key,
    service_of,
    service_prefix,
    service_range_prefix,
)
from raftreg.discovery.outlier import OutlierDetector
from raftreg.discovery.registration import DEFAULT_TTL, Registration
from raftreg.discovery.resolver import Resolver
from raftreg.discovery.sync import SyncRegistration, SyncResolver

__all__ = [
    "DEFAULT_TTL",
    "POLICIES",
    "SERVICES_ROOT",
    "Balancer",
    "Instance",
    "InvalidInstance",
    "NoInstance",
    "OutlierDetector",
    "Picked",
    "Registration",
    "Resolver",
    "ServiceChannels",
    "SyncRegistration",
    "SyncResolver",
    "decode_instance",
    "encode_instance",
    "instance_key",
    "make_balancer",
    "service_of",
    "service_prefix",
    "service_range_prefix",
]
