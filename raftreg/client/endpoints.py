"""Endpoint strings: normalisation and the default endpoint list."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from raftreg.config import load_config, split_hostport
from raftreg.errors import InvalidArgument

DEFAULT_ENDPOINT = "127.0.0.1:2379"


def normalize_endpoint(url: str) -> str:
    """Return host:port from "host:port", "http://host:port" or "https://host:port/".

    Raises `InvalidArgument` when no host:port can be found."""
    s = url.strip()
    scheme, sep, rest = s.partition("://")
    if sep:
        if scheme not in ("http", "https", "grpc", "tcp"):
            raise InvalidArgument(f"endpoint {url!r}: unsupported scheme {scheme!r}")
        s = rest
    s = s.split("/", 1)[0]
    split_hostport(s)
    return s


def normalize_endpoints(urls: Iterable[str]) -> tuple[str, ...]:
    """Normalised, de-duplicated, in the given order; at least one."""
    out: list[str] = []
    for u in urls:
        e = normalize_endpoint(u)
        if e not in out:
            out.append(e)
    if not out:
        raise InvalidArgument("no endpoints given")
    return tuple(out)


def default_endpoints(config_path: str | Path = "cluster.toml") -> list[str]:
    """The client addresses named in `config_path`, or `[DEFAULT_ENDPOINT]` if there is no such
    file. A file that exists but is invalid raises `InvalidArgument`."""
    if not Path(config_path).is_file():
        return [DEFAULT_ENDPOINT]
    return load_config(config_path).client_endpoints
