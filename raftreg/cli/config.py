"""`config get|set|watch|history|rollback`: a service's settings through
`raftreg.configcenter`. Values are JSON; `config set` takes NAME=VALUE (`parse_setting`) and
publishes one revision. A stored value that is not JSON is a warning line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from raftreg.cli.output import _Ctx, _interrupted
from raftreg.client.protocol import RegistryClient
from raftreg.configcenter import (
    DELETE,
    BadValue,
    ConfigCenter,
    Version,
    config_prefix,
    value_text,
    versions_in,
)
from raftreg.errors import InvalidArgument, NotFound


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_setting_value(text: str) -> Any:
    """A `config set` VALUE: JSON text (`8080`, `true`, `"x"`, `[1, 2]`, `{"a": 1}`), else the
    text itself as a string (`round_robin`, `NaN`, ``). Text starting with '"', '[' or '{' was
    meant as JSON and must be valid JSON."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as e:
        if text.lstrip().startswith(('"', "[", "{")):
            raise InvalidArgument(f"value {text!r} is not valid JSON: {e}") from None
        return text


def parse_setting(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` (split at the first '='; see `parse_setting_value`)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidArgument(f"expected NAME=VALUE, got {text!r}")
    return name, parse_setting_value(value)


def _bad_json(v: BadValue) -> dict[str, str]:
    return {"raw": value_text(v), "reason": v.reason}


def version_json(service: str, v: Version) -> dict[str, Any]:
    """One version of a service's config: values written, names deleted, and the written
    values that are not JSON (raw text and reason)."""
    return {
        "service": service,
        "revision": v.revision,
        "puts": {n: x for n, x in v.puts.items() if not isinstance(x, BadValue)},
        "deletes": list(v.deletes),
        "invalid": {n: _bad_json(x) for n, x in v.puts.items() if isinstance(x, BadValue)},
    }


def version_lines(v: Version) -> list[str]:
    """`REV SET NAME=VALUE` / `REV DELETE NAME` lines (VALUE as JSON, or the raw stored text
    when it is not JSON)."""
    out = [f"{v.revision} SET {n}={value_text(x)}" for n, x in v.puts.items()]
    return out + [f"{v.revision} DELETE {n}" for n in v.deletes]


def _warn_bad_versions(ctx: _Ctx, service: str, versions: Sequence[Version]) -> None:
    for v in versions:
        for n, x in v.puts.items():
            if isinstance(x, BadValue):
                ctx.err.write(f"Warning: {service} revision {v.revision}: {n}: {x.reason}\n")


async def cmd_config_get(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    snap = await ConfigCenter(client).get(ns.service, revision=ns.rev)
    entries = list(snap.entries.values())
    if ns.name is not None:
        entry = snap.entries.get(ns.name)
        if entry is None:
            raise NotFound(f"{ns.service} has no setting {ns.name!r}")
        if isinstance(entry.value, BadValue) and ctx.fmt == "simple":
            raise InvalidArgument(f"{ns.service} setting {ns.name!r}: {entry.value.reason}")
        entries = [entry]
    for e in entries:
        if isinstance(e.value, BadValue):
            ctx.err.write(f"Warning: {ns.service} setting {e.name!r}: {e.value.reason}\n")
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": snap.revision},
                "service": ns.service,
                "config": {e.name: e.value for e in entries if e.valid},
                "invalid": {
                    e.name: _bad_json(e.value) for e in entries if isinstance(e.value, BadValue)
                },
            }
        )
    elif ctx.fmt == "table":
        ctx.table(
            ("NAME", "VALUE", "MOD_REV", "VERSION"),
            [[e.name, value_text(e.value), e.mod_revision, e.version] for e in entries],
        )
    elif ns.name is not None:
        ctx.print(value_text(entries[0].value))
    else:
        ctx.print(*(f"{e.name}={value_text(e.value)}" for e in entries if e.valid))
    return 0


async def cmd_config_set(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    changes: dict[str, Any] = {}
    items = [parse_setting(s) for s in ns.settings] + [(n, DELETE) for n in ns.delete]
    for name, value in items:
        if name in changes:
            raise InvalidArgument(f"setting {name!r} given twice")
        changes[name] = value
    rev = await ConfigCenter(client).publish(
        ns.service, changes, expect_revision=ns.expect_rev
    )
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}, "service": ns.service})
    else:
        ctx.print(f"published revision {rev}")
    return 0


async def cmd_config_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    if ns.rev < 0:
        raise InvalidArgument("--rev must be >= 0")
    try:
        w = await client.watch(config_prefix(ns.service), prefix=True, start_revision=ns.rev)
        async with w:
            async for batch in w:
                if batch.compacted:
                    ctx.err.write(
                        "Error: watch was canceled: required revision has been compacted "
                        f"(compact revision {batch.compact_revision})\n"
                    )
                    return 1
                versions = versions_in(ns.service, batch.events)
                _warn_bad_versions(ctx, ns.service, versions)
                for v in versions:
                    if ctx.fmt == "json":
                        ctx.json(version_json(ns.service, v))
                    else:
                        ctx.print(*version_lines(v))
                ctx.out.flush()
    except asyncio.CancelledError:
        return _interrupted()
    return 0


async def cmd_config_history(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    center = ConfigCenter(client, history_timeout=max(10.0, ctx.timeout))
    h = await center.history(ns.service, ns.name)
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": h.revision},
                "service": ns.service,
                "oldest_revision": h.oldest_revision,
                "compacted": h.compacted,
                "versions": [version_json(ns.service, v) for v in h],
            }
        )
        return 0
    if h.compacted:
        ctx.err.write(
            f"Note: history of {ns.service} before revision {h.oldest_revision} "
            "has been compacted\n"
        )
    _warn_bad_versions(ctx, ns.service, h.versions)
    if ctx.fmt == "table":
        rows: list[list[object]] = []
        for v in h:
            rows += [[v.revision, "SET", n, value_text(x)] for n, x in v.puts.items()]
            rows += [[v.revision, "DELETE", n, ""] for n in v.deletes]
        ctx.table(("REVISION", "CHANGE", "NAME", "VALUE"), rows)
    else:
        ctx.print(*(line for v in h for line in version_lines(v)))
    return 0


async def cmd_config_rollback(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    rev = await ConfigCenter(client).rollback(ns.service, ns.rev)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}, "service": ns.service, "rolled_back_to": ns.rev})
    else:
        ctx.print(f"rolled back {ns.service} to revision {ns.rev}: published revision {rev}")
    return 0
