"""A service instance as stored in the registry, and its key layout.

An instance of service S with id I lives at `/services/S/I`; its value is a JSON object
`{"address", "metadata", "weight", "zone", "version", "registered_at"}` (the service and id come
from the key). `decode_instance` is the only reader: it accepts exactly what `encode_instance`
writes (plus unknown fields, ignored, for forward compatibility) and raises `InvalidInstance`
for anything else, so one malformed registration never breaks a resolver.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from raftreg.errors import InvalidArgument

SERVICES_ROOT = "/services/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_WEIGHT = 10_000


class InvalidInstance(InvalidArgument):
    """A registration that is malformed (bad key, bad JSON, missing or wrong fields)."""


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInstance(
            f"{what} {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return name


def _check_address(address: object) -> str:
    if not isinstance(address, str) or not address:
        raise InvalidInstance("address is missing")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInstance(f"address {address!r} is not host:port")
    return address


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance. `weight` >= 1 (used by weighted policies); `registered_at`
    is the registering process's wall clock (seconds since the epoch), informational only."""

    service: str
    id: str
    address: str
    weight: int = 1
    zone: str = ""
    version: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    registered_at: float = 0.0

    def __post_init__(self) -> None:
        _check_name("service", self.service)
        _check_name("instance id", self.id)
        _check_address(self.address)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or not (
            1 <= self.weight <= MAX_WEIGHT
        ):
            raise InvalidInstance(f"weight must be an integer in [1, {MAX_WEIGHT}]")
        if not isinstance(self.zone, str) or not isinstance(self.version, str):
            raise InvalidInstance("zone and version must be strings")
        md = self.metadata
        if not isinstance(md, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in md.items()
        ):
            raise InvalidInstance("metadata must map strings to strings")
        object.__setattr__(self, "metadata", MappingProxyType(dict(md)))

    @property
    def key(self) -> str:
        return instance_key(self.service, self.id)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "metadata": dict(self.metadata),
            "weight": self.weight,
            "zone": self.zone,
            "version": self.version,
            "registered_at": self.registered_at,
        }


def service_prefix(service: str) -> str:
    """The key prefix of every instance of `service` ("/services/<service>/")."""
    return f"{SERVICES_ROOT}{_check_name('service', service)}/"


def instance_key(service: str, instance_id: str) -> str:
    return service_prefix(service) + _check_name("instance id", instance_id)


def encode_instance(instance: Instance) -> bytes:
    return json.dumps(instance.to_json(), separators=(",", ":"), sort_keys=True).encode()


def parse_key(key: bytes | str) -> tuple[str, str]:
    """(service, instance id) of an instance key; `InvalidInstance` if it is not one."""
    try:
        k = key.decode() if isinstance(key, bytes) else key
    except UnicodeDecodeError:
        raise InvalidInstance("key is not UTF-8") from None
    if not k.startswith(SERVICES_ROOT):
        raise InvalidInstance(f"key {k!r} is not under {SERVICES_ROOT}")
    parts = k[len(SERVICES_ROOT):].split("/")
    if len(parts) != 2:
        raise InvalidInstance(f"key {k!r} is not {SERVICES_ROOT}<service>/<instance-id>")
    return _check_name("service", parts[0]), _check_name("instance id", parts[1])


def decode_instance(key: bytes | str, value: bytes | str) -> Instance:
    """The instance stored at `key` with `value`; `InvalidInstance` if either is malformed."""
    service, instance_id = parse_key(key)
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInstance(f"{service}/{instance_id}: value is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInstance(f"{service}/{instance_id}: value is not a JSON object")
    try:
        ra = doc.get("registered_at", 0.0)
        if isinstance(ra, bool) or not isinstance(ra, int | float):
            raise InvalidInstance("registered_at must be a number")
        return Instance(
            service=service,
            id=instance_id,
            address=_check_address(doc.get("address")),
            weight=doc.get("weight", 1),
            zone=doc.get("zone", ""),
            version=doc.get("version", ""),
            metadata=doc.get("metadata") or {},
            registered_at=float(ra),
        )
    except InvalidInstance as e:
        raise InvalidInstance(f"{service}/{instance_id}: {e}") from None
