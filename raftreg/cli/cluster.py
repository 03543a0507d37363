"""The cluster commands: `member list|add|remove` (add and remove on the raftreg backend only)
and `endpoint status|health` (each endpoint on its own, reachable or not).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from raftreg.cli.connect import _raftreg_only
from raftreg.cli.output import _Ctx
from raftreg.client.protocol import Member, RegistryClient
from raftreg.errors import InvalidArgument, RegistryError


async def cmd_member_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    members = await client.member_list()
    if ctx.fmt == "json":
        ctx.json({"members": [asdict(m) for m in members]})
        return 0
    rows = [
        [
            f"{m.id:x}",
            "started" if m.connected else "unreachable",
            m.name,
            ",".join(m.peer_urls),
            ",".join(m.client_urls),
            str(m.is_learner).lower(),
            str(m.is_leader).lower(),
        ]
        for m in members
    ]
    if ctx.fmt == "table":
        ctx.table(
            ("ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER", "IS LEADER"),
            rows,
        )
    else:
        ctx.print(*(", ".join(r) for r in rows))
    return 0


def _member_id(text: str, members: Sequence[Member]) -> int:
    """A member id given in hex (as `member list` prints it) or a member name."""
    for m in members:
        if text == m.name:
            return m.id
    try:
        return int(text, 16)
    except ValueError:
        raise InvalidArgument(f"{text!r} is neither a member name nor a hex member id") from None


async def cmd_member_add(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "member add")
    members = await c.member_add(ns.name, ns.peer_urls, ns.client_urls)
    new = members[0]
    if ctx.fmt == "json":
        ctx.json({"member": asdict(new), "members": [asdict(m) for m in members]})
        return 0
    ctx.print(
        f"Member {new.id:x} added to the cluster",
        "",
        "Start the new member with an empty data dir, its [[node]] entry in the configuration",
        "and --join, e.g.:",
        f"  raftreg node --config cluster.toml --name {ns.name} --join",
    )
    return 0


async def cmd_member_remove(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "member remove")
    mid = _member_id(ns.member, await c.member_list())
    members = await c.member_remove(mid)
    if ctx.fmt == "json":
        ctx.json({"removed": f"{mid:x}", "members": [asdict(m) for m in members]})
    else:
        ctx.print(f"Member {mid:x} removed from the cluster")
    return 0


def human_bytes(n: int) -> str:
    """Sizes as etcdctl prints them (SI units: "0 B", "25 kB", "1.2 MB")."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


STATUS_HEADERS = (
    "ENDPOINT",
    "ID",
    "NAME",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "RAFT TERM",
    "RAFT INDEX",
    "APPLIED INDEX",
    "REVISION",
    "COMPACTED",
    "KEYS",
    "HASH",
    "ERRORS",
)


async def cmd_endpoint_status(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    eps = list(client.endpoints)
    results = await asyncio.gather(*(client.status(ep, with_hash=True) for ep in eps),
                                   return_exceptions=True)
    rows: list[list[object]] = []
    docs: list[dict[str, Any]] = []
    failed = 0
    for ep, st in zip(eps, results, strict=True):
        if isinstance(st, RegistryError):
            ctx.err.write(f"Error: failed to get the status of endpoint {ep}: {st}\n")
            failed += 1
            continue
        if isinstance(st, BaseException):
            raise st
        docs.append({"Endpoint": ep, "Status": asdict(st)})
        rows.append(
            [
                ep,
                f"{st.member_id:x}",
                st.name,
                st.version,
                human_bytes(st.db_size),
                str(st.is_leader).lower(),
                st.raft_term,
                st.raft_index,
                st.applied_index,
                st.revision,
                st.compact_revision,
                st.keys,
                f"{st.hash:x}",
                "; ".join(st.errors),
            ]
        )
    if ctx.fmt == "json":
        ctx.json(docs)
    elif ctx.fmt == "table" and rows:
        ctx.table(STATUS_HEADERS, rows)
    else:
        ctx.print(*(", ".join(str(c) for c in r) for r in rows))
    return 1 if failed else 0


async def _check_health(ctx: _Ctx, endpoint: str) -> tuple[str, bool, float, str]:
    start = time.monotonic()
    try:
        async with ctx.factory([endpoint], ctx.timeout) as c:
            await c.get(b"health", count_only=True)
    except RegistryError as e:
        return endpoint, False, time.monotonic() - start, str(e)
    return endpoint, True, time.monotonic() - start, ""


async def cmd_endpoint_health(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    results = await asyncio.gather(*(_check_health(ctx, ep) for ep in client.endpoints))
    if ctx.fmt == "json":
        ctx.json(
            [
                {"endpoint": ep, "health": ok, "took": f"{took * 1000:.3f}ms", "error": err}
                for ep, ok, took, err in results
            ]
        )
    elif ctx.fmt == "table":
        ctx.table(
            ("ENDPOINT", "HEALTH", "TOOK", "ERROR"),
            [[ep, str(ok).lower(), f"{took * 1000:.3f}ms", err] for ep, ok, took, err in results],
        )
    else:
        for ep, ok, took, err in results:
            if ok:
                ctx.print(
                    f"{ep} is healthy: successfully committed proposal: took = {took * 1000:.3f}ms"
                )
            else:
                ctx.err.write(f"{ep} is unhealthy: failed to commit proposal: {err}\n")
    return 0 if all(ok for _, ok, _, _ in results) else 1
