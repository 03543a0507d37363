"""The config center: per-service configuration in the registry, with hot reload.

This package owns the configuration key layout (`/config/<service>/<name>`, each value one JSON
text; `layout`), `ConfigCenter` (read a service's config, publish several changes atomically as
one revision with an optional optimistic check, list its history from the store's MVCC history,
roll back to an earlier revision; `center`), `ConfigWatcher` (a service's typed config kept
current by a watch: list-then-watch, every change validated by a parser, invalid changes
logged on "raftreg.config" and refused while the last good config stays in force; `watcher`)
and `dataclass_parser` (settings as a checked frozen dataclass, '.' in names = nested
sections; `typed`). Everything is built on the `RegistryClient` protocol only, so it works on
every backend (raftreg, etcd, in-memory).
"""

from __future__ import annotations

from raftreg.configcenter.center import (
    DELETE,
    ConfigCenter,
    ConfigChange,
    ConfigEntry,
    ConfigSnapshot,
    History,
    Version,
    snapshot_of,
    versions_in,
)
from raftreg.configcenter.layout import (
    CONFIG_ROOT,
    BadValue,
    config_key,
    config_prefix,
    decode_value,
    encode_value,
    value_text,
)
from raftreg.configcenter.typed import dataclass_parser
from raftreg.configcenter.watcher import ConfigWatcher

__all__ = [
    "CONFIG_ROOT",
    "DELETE",
    "BadValue",
    "ConfigCenter",
    "ConfigChange",
    "ConfigEntry",
    "ConfigSnapshot",
    "ConfigWatcher",
    "History",
    "Version",
    "config_key",
    "config_prefix",
    "dataclass_parser",
    "decode_value",
    "encode_value",
    "snapshot_of",
    "value_text",
    "versions_in",
]
