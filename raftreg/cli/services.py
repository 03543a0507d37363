"""`services list|watch`: the instances registered under `/services/`
(`raftreg.discovery.instance`). A malformed registration is a warning line on stderr, never a
failure; `services watch` re-lists when its watch is compacted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Sequence

from raftreg.cli.output import _Ctx, _interrupted, _text
from raftreg.client.protocol import RegistryClient
from raftreg.common.types import EventType, KeyValue
from raftreg.discovery.catalog import (
    Malformed,
    decode_registrations,
    list_instances,
    registrations_prefix,
)
from raftreg.discovery.instance import (
    Instance,
    instance_json,
)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _warn_malformed(ctx: _Ctx, malformed: Iterable[Malformed]) -> None:
    for m in malformed:
        ctx.err.write(f"Warning: skipping malformed registration {_text(m.key)}: {m.reason}\n")


def _instances(ctx: _Ctx, kvs: Sequence[KeyValue],
               service: str | None) -> list[tuple[Instance, KeyValue]]:
    """The well-formed registrations of `service` (None: any) among `kvs`; a warning line on
    stderr for each malformed one."""
    good, bad = decode_registrations(kvs, service)
    _warn_malformed(ctx, bad)
    return [(x.instance, x.kv) for x in good]


INSTANCE_HEADERS = ("SERVICE", "ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "AGE", "LEASE",
                    "TTL", "METADATA")


async def cmd_services_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    """Instances with their lease and its remaining TTL ("-": no lease; "expired": the lease
    ended after the instances were read)."""
    cat = await list_instances(client, ns.service)
    _warn_malformed(ctx, cat.malformed)
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": cat.revision},
                "instances": [
                    {**instance_json(x.instance, x.kv),
                     "ttl": x.ttl.ttl if x.ttl else None,
                     "granted_ttl": x.ttl.granted_ttl if x.ttl else None}
                    for x in cat.instances
                ],
            }
        )
        return 0
    now = time.time()
    rows = [
        [
            i.service, i.id, i.address, i.weight, i.zone, i.version,
            _age(now - i.registered_at) if i.registered_at > 0 else "-",
            f"{x.kv.lease:x}" if x.kv.lease else "-",
            "-" if x.ttl is None else "expired" if x.ttl.ttl < 0 else f"{x.ttl.ttl}s",
            ",".join(f"{k}={v}" for k, v in sorted(i.metadata.items())),
        ]
        for x in cat.instances
        for i in (x.instance,)
    ]
    if ctx.fmt == "table":
        ctx.table(INSTANCE_HEADERS, rows)
    else:
        ctx.print(*(", ".join(str(c) for c in r) for r in rows))
    return 0


def instance_line(kind: str, i: Instance) -> str:
    """`ADDED|UPDATED|REMOVED service/id address weight=W zone=Z version=V`."""
    return (
        f"{kind} {i.service}/{i.id} {i.address} weight={i.weight} zone={i.zone} "
        f"version={i.version}"
    )


async def cmd_services_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    """The current instances as ADDED, then every change, until Ctrl-C. A compacted watch
    re-lists and prints the difference."""
    prefix = registrations_prefix(ns.service)
    known: dict[bytes, Instance] = {}

    def show(kind: str, i: Instance, revision: int) -> None:
        if ctx.fmt == "json":
            ctx.json({"type": kind, "revision": revision, "instance": instance_json(i)})
        else:
            ctx.print(instance_line(kind, i))

    def put(key: bytes, i: Instance | None, revision: int) -> None:
        old = known.pop(key, None)
        if i is None:
            if old is not None:
                show("REMOVED", old, revision)
            return
        known[key] = i
        if old is None:
            show("ADDED", i, revision)
        elif old != i:
            show("UPDATED", i, revision)

    try:
        while True:
            snapshot, w = await client.list_then_watch(prefix)
            async with w:
                fresh = {kv.key: i for i, kv in _instances(ctx, snapshot.kvs, ns.service)}
                for key in [k for k in known if k not in fresh]:
                    put(key, None, snapshot.revision)
                for key, i in fresh.items():
                    put(key, i, snapshot.revision)
                ctx.out.flush()
                async for batch in w:
                    if batch.compacted:
                        break
                    for e in batch.events:
                        if e.type == EventType.DELETE:
                            put(e.kv.key, None, e.kv.mod_revision)
                            continue
                        decoded = _instances(ctx, [e.kv], ns.service)
                        put(e.kv.key, decoded[0][0] if decoded else None, e.kv.mod_revision)
                    ctx.out.flush()
                else:
                    return 0
    except asyncio.CancelledError:
        return _interrupted()
