"""Backend selection by configuration alone: raftreg's own cluster or a real etcd cluster.

The backend and its endpoints come from, first match wins:
1. the endpoints given explicitly (`connect(endpoints)`, the CLI's `--endpoints`): a URL
   scheme selects the backend — "etcd://a:2379,b:2379" is etcd, "raftreg://..." is raftreg;
2. the environment: `RAFTREG_BACKEND` = "raftreg" | "etcd", and `RAFTREG_ENDPOINTS` (a
   comma-separated list, same syntax as 1, scheme included);
3. a `[registry]` table in the cluster file (default ./cluster.toml):
       [registry]
       backend = "etcd"                                  # or "raftreg" (default)
       endpoints = ["127.0.0.1:2379", "127.0.0.1:22379"] # or one "etcd://..." string
4. raftreg, with the client addresses of the file's [[node]] tables (or 127.0.0.1:2379).
Endpoints without a scheme take the backend chosen by the first of 1-4 that names one.

This reads only the `[registry]` table itself (raftreg's `ClusterConfig` ignores it), so a
cluster.toml may hold both a raftreg cluster and the registry choice, or only the latter.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raftreg.client.endpoints import DEFAULT_ENDPOINT, default_endpoints, normalize_endpoint
from raftreg.errors import InvalidArgument

Backend = Literal["raftreg", "etcd"]
BACKENDS: tuple[Backend, ...] = ("raftreg", "etcd")
ENV_BACKEND = "RAFTREG_BACKEND"
ENV_ENDPOINTS = "RAFTREG_ENDPOINTS"
_SCHEMES: dict[str, Backend] = {"etcd": "etcd", "raftreg": "raftreg"}


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen backend and its endpoints ("host:port", scheme stripped)."""

    backend: Backend
    endpoints: tuple[str, ...]


def _backend(name: str, where: str) -> Backend:
    b = name.strip().lower()
    for known in BACKENDS:
        if b == known:
            return known
    raise InvalidArgument(f"{where}: unknown backend {name!r} (expected raftreg or etcd)")


def parse_endpoints(spec: Sequence[str] | str) -> tuple[Backend | None, list[str]]:
    """(backend named by a scheme or None, "host:port" endpoints) from "etcd://a:1,b:2",
    "a:1,b:2", ["http://a:1", "b:2"], ... Mixed backends in one list raise `InvalidArgument`."""
    items = [spec] if isinstance(spec, str) else list(spec)
    backend: Backend | None = None
    out: list[str] = []
    for item in items:
        scheme_of_item: Backend | None = None
        for raw in item.split(","):
            part = raw.strip()
            if not part:
                continue
            scheme, sep, rest = part.partition("://")
            named = _SCHEMES.get(scheme.lower()) if sep else None
            if named is not None:
                scheme_of_item = named
                part = rest
            b = named or scheme_of_item
            if b is not None:
                if backend is not None and backend != b:
                    raise InvalidArgument(f"endpoints {spec!r} name two backends")
                backend = b
            out.append(normalize_endpoint(part))
    return backend, out


def registry_table(config_path: str | Path) -> dict[str, Any]:
    """The `[registry]` table of `config_path` ({} when the file or the table is absent)."""
    p = Path(config_path)
    if not p.is_file():
        return {}
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{p}: {e}") from None
    table = raw.get("registry", {})
    if not isinstance(table, dict):
        raise InvalidArgument(f"{p}: [registry] must be a table")
    unknown = set(table) - {"backend", "endpoints"}
    if unknown:
        raise InvalidArgument(f"{p}: [registry]: unknown setting(s) {', '.join(sorted(unknown))}")
    return table


def select_backend(
    endpoints: Sequence[str] | str | None = None,
    *,
    config_path: str | Path = "cluster.toml",
    env: Mapping[str, str] | None = None,
    backend: str | None = None,
) -> Selection:
    """The backend and endpoints to use; see the module docstring for the order. `backend`
    (if given) overrides everything but a scheme in `endpoints`."""
    env = os.environ if env is None else env
    table: dict[str, Any] | None = None

    def file_table() -> dict[str, Any]:
        nonlocal table
        if table is None:
            table = registry_table(config_path)
        return table

    chosen: Backend | None = None
    eps: list[str] = []
    if endpoints is not None:
        chosen, eps = parse_endpoints(endpoints)
    if chosen is None and backend:
        chosen = _backend(backend, "backend")
    if chosen is None and env.get(ENV_BACKEND, "").strip():
        chosen = _backend(env[ENV_BACKEND], ENV_BACKEND)
    if not eps and env.get(ENV_ENDPOINTS, "").strip():
        named, eps = parse_endpoints(env[ENV_ENDPOINTS])
        chosen = chosen or named
    if chosen is None and "backend" in file_table():
        chosen = _backend(str(file_table()["backend"]), f"{config_path}: [registry] backend")
    if not eps and "endpoints" in file_table():
        spec = file_table()["endpoints"]
        if not isinstance(spec, str | list):
            raise InvalidArgument(f"{config_path}: [registry] endpoints must be a list")
        named, eps = parse_endpoints(spec)
        chosen = chosen or named
    chosen = chosen or "raftreg"
    if not eps:
        eps = default_endpoints(config_path) if chosen == "raftreg" else [DEFAULT_ENDPOINT]
    return Selection(chosen, tuple(eps))
