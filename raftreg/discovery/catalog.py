"""What is registered now, for people and tools (the CLI's `services list`, the dashboard).

`decode_registrations(kvs, service)` splits stored key-values into well-formed registrations of
`service` (None: any service) and malformed ones with the reason; keys of other services that
share the range prefix are left out. `list_instances(client, service)` reads them in one
linearizable range and adds each lease's remaining TTL, asked after the range (a lease that
expired in between shows `ttl == -1`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from raftreg.client.protocol import LeaseTTL, RegistryClient
from raftreg.common.types import KeyValue
from raftreg.discovery.instance import (
    SERVICES_ROOT,
    Instance,
    InvalidInstance,
    decode_instance,
    service_of,
    service_range_prefix,
)


@dataclass(frozen=True, slots=True)
class Listed:
    """One registration: the instance, its stored key-value, and its lease's TTL (None when
    the key has no lease, or the TTL was not asked for)."""

    instance: Instance
    kv: KeyValue
    ttl: LeaseTTL | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    key: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Catalog:
    revision: int
    instances: tuple[Listed, ...]
    malformed: tuple[Malformed, ...]


def registrations_prefix(service: str | None) -> str:
    """The range prefix holding the registrations of `service` (None: of every service)."""
    return service_range_prefix(service) if service else SERVICES_ROOT


def decode_registrations(
    kvs: Iterable[KeyValue], service: str | None
) -> tuple[list[Listed], list[Malformed]]:
    good: list[Listed] = []
    bad: list[Malformed] = []
    for kv in kvs:
        if service is not None and service_of(kv.key) != service:
            continue  # another service under the same range prefix
        try:
            good.append(Listed(decode_instance(kv.key, kv.value), kv))
        except InvalidInstance as e:
            bad.append(Malformed(kv.key, str(e)))
    return good, bad


async def list_instances(
    client: RegistryClient, service: str | None = None, *, lease_ttls: bool = True
) -> Catalog:
    res = await client.get(registrations_prefix(service), prefix=True)
    good, bad = decode_registrations(res.kvs, service)
    if lease_ttls:
        leases = sorted({x.kv.lease for x in good if x.kv.lease})
        ttls = await asyncio.gather(*(client.lease_time_to_live(lease) for lease in leases))
        by_id = dict(zip(leases, ttls, strict=True))
        good = [Listed(x.instance, x.kv, by_id.get(x.kv.lease)) for x in good]
    return Catalog(res.revision, tuple(good), tuple(bad))
