"""What the dashboard shows, as JSON documents read through a `RegistryClient`.

Each view is one consistent read (linearizable, at one revision) plus, where it needs them,
per-lease or per-member calls made after it; `revision` says which revision the keys are of.
Keys and values are shown as UTF-8 text (undecodable bytes as backslash escapes), values cut to
`MAX_VALUE_CHARS` with `truncated` set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raftreg.client.protocol import RegistryClient
from raftreg.client.resumable_watch import ALL_KEYS
from raftreg.common.types import KeyValue
from raftreg.configcenter import CONFIG_ROOT, ConfigCenter, config_prefix, snapshot_of, value_text
from raftreg.discovery.catalog import list_instances
from raftreg.discovery.instance import instance_json
from raftreg.errors import InvalidArgument, RegistryError

MAX_VALUE_CHARS = 4096
MAX_KEYS = 1000


def text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def kv_json(kv: KeyValue) -> dict[str, Any]:
    value = text(kv.value)
    return {
        "key": text(kv.key),
        "value": value[:MAX_VALUE_CHARS],
        "truncated": len(value) > MAX_VALUE_CHARS,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


async def cluster_view(client: RegistryClient) -> dict[str, Any]:
    """The members as the answering node lists them, each with its own Status (leader, term,
    raft index) or, when it cannot be reached, `healthy: false` and the error."""
    members = await client.member_list()

    async def one(client_urls: tuple[str, ...]) -> dict[str, Any]:
        if not client_urls:
            return {"healthy": False, "error": "no client URL"}
        try:
            s = await client.status(client_urls[0])
        except RegistryError as e:
            return {"healthy": False, "error": str(e)}
        return {
            "healthy": s.leader != 0,
            "error": "; ".join(s.errors),
            "leader": f"{s.leader:x}",
            "is_leader": s.is_leader,
            "raft_term": s.raft_term,
            "raft_index": s.raft_index,
            "applied_index": s.applied_index,
            "revision": s.revision,
            "db_size": s.db_size,
            "version": s.version,
        }

    statuses = await asyncio.gather(*(one(m.client_urls) for m in members))
    return {
        "members": [
            {
                "id": f"{m.id:x}",
                "name": m.name,
                "peer_urls": list(m.peer_urls),
                "client_urls": list(m.client_urls),
                "is_learner": m.is_learner,
                **st,
            }
            for m, st in zip(members, statuses, strict=True)
        ]
    }


async def services_view(client: RegistryClient) -> dict[str, Any]:
    """Every well-formed registration under `/services/` with its lease's remaining TTL
    (-1: the lease is gone; null: no lease), and the malformed ones with the reason."""
    cat = await list_instances(client)
    return {
        "revision": cat.revision,
        "instances": [
            {**instance_json(x.instance, x.kv),
             "lease": f"{x.kv.lease:x}" if x.kv.lease else "",
             "ttl": x.ttl.ttl if x.ttl else None,
             "granted_ttl": x.ttl.granted_ttl if x.ttl else None}
            for x in cat.instances
        ],
        "malformed": [{"key": text(m.key), "reason": m.reason} for m in cat.malformed],
    }


async def keys_view(client: RegistryClient, prefix: str, limit: int) -> dict[str, Any]:
    """The keys under `prefix` ("" = all), in key order, at most `limit` (1..MAX_KEYS)."""
    if not 0 < limit <= MAX_KEYS:
        raise InvalidArgument(f"limit must be in [1, {MAX_KEYS}]")
    if prefix:
        res = await client.get(prefix, prefix=True, limit=limit)
    else:
        res = await client.get(ALL_KEYS, range_end=ALL_KEYS, limit=limit)
    return {"revision": res.revision, "count": res.count, "more": res.more,
            "kvs": [kv_json(kv) for kv in res.kvs]}


async def config_view(client: RegistryClient) -> dict[str, Any]:
    """Every service that has configuration under `/config/`, with its settings."""
    res = await client.get(CONFIG_ROOT, prefix=True)
    by_service: dict[str, list[KeyValue]] = {}
    for kv in res.kvs:
        service = text(kv.key)[len(CONFIG_ROOT):].split("/", 1)[0]
        by_service.setdefault(service, []).append(kv)
    services: list[dict[str, Any]] = []
    for service, kvs in sorted(by_service.items()):
        try:
            snap = snapshot_of(service, res.revision, kvs)
        except InvalidArgument as e:  # a key under /config/ whose service name is not one
            services.append({"service": service, "error": str(e), "settings": []})
            continue
        services.append({
            "service": service,
            "settings": [
                {"name": e.name, "value": value_text(e.value)[:MAX_VALUE_CHARS],
                 "mod_revision": e.mod_revision, "version": e.version}
                for e in snap.entries.values()
            ],
        })
    return {"revision": res.revision, "services": services}


async def config_history_view(client: RegistryClient, service: str) -> dict[str, Any]:
    """The versions of `service`'s configuration, newest first (see ConfigCenter.history)."""
    config_prefix(service)  # InvalidArgument for a bad name
    h = await ConfigCenter(client).history(service)
    return {
        "service": service,
        "revision": h.revision,
        "oldest_revision": h.oldest_revision,
        "compacted": h.compacted,
        "versions": [
            {"revision": v.revision,
             "puts": {n: value_text(x)[:MAX_VALUE_CHARS] for n, x in v.puts.items()},
             "deletes": list(v.deletes)}
            for v in reversed(h.versions)
        ],
    }
