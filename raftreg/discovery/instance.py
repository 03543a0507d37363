"""A service instance as stored in the registry, and its key layout.

The reference document's layouts are the contract (Go and Java services register that way):
- `/services/S/I` holding a JSON object: `{"name": S, "addr": "host:port", "version": ...}`,
  plus raftreg's `weight`, `zone`, `metadata`, `registered_at`. The id I defaults to the
  address (`/services/user-service/10.0.0.1:8080`). `address` is read as `addr` (raftreg
  before 0.2 wrote it); `name`, when present, must be S.
- `/services/S/I` or `/services/S` holding just the address, `10.0.0.1:8080` (the document's
  `client.Put(ctx, "/services/user", "192.168.1.10:50051", ...)`); the id is then I, else the
  address. So one service's registrations lie under the prefix `/services/S` (no slash):
  `service_range_prefix`, which also covers other services whose names extend S, and readers
  keep only the keys whose service is S.
`encode_instance` writes the first form. `decode_instance` is the only reader: it accepts those
forms (unknown JSON fields are ignored, for forward compatibility) and raises `InvalidInstance`
for anything else, so one malformed registration never breaks a resolver.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from raftreg.common.types import KeyValue
from raftreg.errors import InvalidArgument

SERVICES_ROOT = "/services/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ID = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9_.\-:\[\]]{0,127}$")  # a name, or host:port
MAX_WEIGHT = 10_000


class InvalidInstance(InvalidArgument):
    """A registration that is malformed (bad key, bad JSON, missing or wrong fields)."""


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInstance(
            f"{what} {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return name


def _check_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not _ID.match(instance_id):
        raise InvalidInstance(
            f"instance id {instance_id!r} must be 1-128 characters of letters, digits, "
            "'_', '.', '-', ':', '[', ']'"
        )
    return instance_id


def _check_address(address: object) -> str:
    if not isinstance(address, str) or not address:
        raise InvalidInstance("address is missing")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInstance(f"address {address!r} is not host:port")
    return address


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance. `id` "" means the address (the document's layout);
    `weight` >= 1 (used by weighted policies); `registered_at` is the registering process's
    wall clock (seconds since the epoch), informational only."""

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
        _check_address(self.address)
        if self.id == "":
            object.__setattr__(self, "id", self.address)
        _check_id(self.id)
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
            "name": self.service,
            "addr": self.address,
            "metadata": dict(self.metadata),
            "weight": self.weight,
            "zone": self.zone,
            "version": self.version,
            "registered_at": self.registered_at,
        }


def instance_json(i: Instance, kv: KeyValue | None = None) -> dict[str, Any]:
    """`i` as JSON for people and tools (the CLI's `-w json`, the dashboard): its service and
    id, the stored fields, and with `kv` the lease and revisions of its key."""
    out: dict[str, Any] = {"service": i.service, "id": i.id, **i.to_json()}
    if kv is not None:
        out.update(lease=kv.lease, create_revision=kv.create_revision,
                   mod_revision=kv.mod_revision)
    return out


def service_prefix(service: str) -> str:
    """The key prefix of the instances of `service` that have an id ("/services/<service>/")."""
    return f"{SERVICES_ROOT}{_check_name('service', service)}/"


def service_range_prefix(service: str) -> str:
    """A key prefix covering every registration of `service` in either layout
    ("/services/<service>"); it covers services whose names extend it too, so a reader keeps
    only the keys `service_of` maps to `service`."""
    return f"{SERVICES_ROOT}{_check_name('service', service)}"


def instance_key(service: str, instance_id: str) -> str:
    return service_prefix(service) + _check_id(instance_id)


def encode_instance(instance: Instance) -> bytes:
    return json.dumps(instance.to_json(), separators=(",", ":"), sort_keys=True).encode()


def service_of(key: bytes | str) -> str | None:
    """The service a registration key belongs to, without validating the rest (None: not a
    registration key)."""
    k = key.decode(errors="replace") if isinstance(key, bytes) else key
    if not k.startswith(SERVICES_ROOT):
        return None
    return k[len(SERVICES_ROOT):].split("/", 1)[0] or None


def parse_key(key: bytes | str) -> tuple[str, str]:
    """(service, instance id) of a registration key; the id is "" for `/services/<service>`.
    `InvalidInstance` if it is neither layout."""
    try:
        k = key.decode() if isinstance(key, bytes) else key
    except UnicodeDecodeError:
        raise InvalidInstance("key is not UTF-8") from None
    if not k.startswith(SERVICES_ROOT):
        raise InvalidInstance(f"key {k!r} is not under {SERVICES_ROOT}")
    parts = k[len(SERVICES_ROOT):].split("/")
    if len(parts) == 1:
        return _check_name("service", parts[0]), ""
    if len(parts) != 2:
        raise InvalidInstance(f"key {k!r} is not {SERVICES_ROOT}<service>[/<instance-id>]")
    return _check_name("service", parts[0]), _check_id(parts[1])


def _document(value: bytes | str) -> object:
    """The JSON value, or the bare address the value is."""
    try:
        text = value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        raise InvalidInstance("value is not UTF-8") from None
    try:
        return json.loads(text)
    except ValueError:
        try:
            return _check_address(text.strip())
        except InvalidInstance:
            raise InvalidInstance("value is not JSON, nor a host:port address") from None


def decode_instance(key: bytes | str, value: bytes | str) -> Instance:
    """The instance stored at `key` with `value`; `InvalidInstance` if either is malformed."""
    service, instance_id = parse_key(key)
    where = f"{service}/{instance_id}" if instance_id else service
    try:
        doc = _document(value)
        if isinstance(doc, str):
            return Instance(service=service, id=instance_id, address=_check_address(doc))
        if not isinstance(doc, dict):
            raise InvalidInstance("value is not a JSON object or an address")
        name = doc.get("name", service)
        if name != service:
            raise InvalidInstance(f"name {name!r} is not the service in the key")
        addr, legacy = doc.get("addr"), doc.get("address")
        if addr is not None and legacy is not None and addr != legacy:
            raise InvalidInstance("addr and address differ")
        ra = doc.get("registered_at", 0.0)
        if isinstance(ra, bool) or not isinstance(ra, int | float):
            raise InvalidInstance("registered_at must be a number")
        return Instance(
            service=service,
            id=instance_id,
            address=_check_address(addr if addr is not None else legacy),
            weight=doc.get("weight", 1),
            zone=doc.get("zone", ""),
            version=doc.get("version", ""),
            metadata=doc.get("metadata") or {},
            registered_at=float(ra),
        )
    except InvalidInstance as e:
        raise InvalidInstance(f"{where}: {e}") from None
