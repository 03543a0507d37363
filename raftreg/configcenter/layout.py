"""Where configuration lives in the key space, and how a setting's value is encoded.

The configuration of service S lives under `/config/S/`; each key `/config/S/<name>` holds one
setting whose value is JSON text (a number, string, bool, null, list or object). Service names
are 1-128 characters of letters, digits, '_', '.', '-' (no '/', so one service's prefix never
contains another's keys). Setting names are non-empty UTF-8 text that may contain '.' and '/'
but no empty '/'-separated segment (no leading, trailing or doubled '/') and no control
character.

`encode_value` is the only writer (compact JSON, NaN and infinities refused); `decode_value` is
the only reader and never raises: a stored value that is not JSON comes back as a
`BadValue` carrying the reason, so one hand-written bad key never breaks a reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from raftreg.errors import InvalidArgument

CONFIG_ROOT = "/config/"
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class BadValue:
    """A stored value (or key) that cannot be read as a setting: `raw` as stored, `reason`
    says why."""

    raw: bytes
    reason: str


def check_service(service: str) -> str:
    if not isinstance(service, str) or not _SERVICE.match(service):
        raise InvalidArgument(
            f"service {service!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return service


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument("setting name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH or _CONTROL.search(name):
        raise InvalidArgument(
            f"setting name {name!r} must be at most {MAX_NAME_LENGTH} characters, "
            "without control characters"
        )
    if "" in name.split("/"):
        raise InvalidArgument(f"setting name {name!r} has an empty '/'-separated segment")
    return name


def config_prefix(service: str) -> str:
    """The key prefix of every setting of `service` ("/config/<service>/")."""
    return f"{CONFIG_ROOT}{check_service(service)}/"


def config_key(service: str, name: str) -> str:
    return config_prefix(service) + check_name(name)


def name_of(prefix: bytes, key: bytes) -> str | BadValue:
    """The setting name of `key` under `prefix` (a key known to start with it), or a
    `BadValue` when the name is not valid UTF-8 text."""
    raw = key[len(prefix):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadValue(raw, "setting name is not UTF-8")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode_value(value: Any) -> bytes:
    """`value` as compact JSON text; `InvalidArgument` if it is not a JSON value."""
    try:
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"value {value!r} is not JSON: {e}") from None


def decode_value(raw: bytes) -> Any | BadValue:
    """The JSON value stored in `raw`, or a `BadValue` saying why it is not one."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        return BadValue(raw, "value is not UTF-8")
    except ValueError as e:
        return BadValue(raw, f"value is not JSON ({e})")


def value_text(value: Any) -> str:
    """A decoded value (or `BadValue`) as one line of text: JSON, or the raw stored text."""
    if isinstance(value, BadValue):
        return value.raw.decode("utf-8", errors="backslashreplace")
    return encode_value(value).decode("utf-8")
