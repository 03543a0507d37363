"""The lease commands: `lease grant`, `revoke`, `timetolive`, `list` and `keep-alive` (until
Ctrl-C, exit 0; exit 1 with an error line when the lease is lost).
"""

from __future__ import annotations

import argparse
import asyncio

from raftreg.cli.output import _b64, _Ctx, _interrupted, _text
from raftreg.client.protocol import RegistryClient


async def cmd_lease_grant(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    r = await client.lease_grant(ns.ttl)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": r.revision}, "ID": r.id, "TTL": r.ttl})
    else:
        ctx.print(f"lease {r.id:016x} granted with TTL({r.ttl}s)")
    return 0


async def cmd_lease_revoke(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    await client.lease_revoke(ns.id)
    if ctx.fmt == "json":
        ctx.json({"ID": ns.id, "revoked": True})
    else:
        ctx.print(f"lease {ns.id:016x} revoked")
    return 0


async def cmd_lease_timetolive(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    t = await client.lease_time_to_live(ns.id, keys=ns.keys)
    if ctx.fmt == "json":
        ctx.json(
            {
                "ID": t.id,
                "TTL": t.ttl,
                "grantedTTL": t.granted_ttl,
                "keys": [_b64(k) for k in t.keys],
            }
        )
        return 0
    if t.ttl == -1:
        ctx.print(f"lease {ns.id:016x} already expired")
        return 0
    line = f"lease {t.id:016x} granted with TTL({t.granted_ttl}s), remaining({t.ttl}s)"
    if ns.keys:
        line += f", attached keys([{' '.join(_text(k) for k in t.keys)}])"
    ctx.print(line)
    return 0


async def cmd_lease_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    ids = await client.lease_list()
    if ctx.fmt == "json":
        ctx.json({"leases": [{"ID": i} for i in ids]})
    elif ctx.fmt == "table":
        ctx.table(("ID",), [[f"{i:016x}"] for i in ids])
    else:
        ctx.print(f"found {len(ids)} leases", *(f"{i:016x}" for i in ids))
    return 0


async def cmd_lease_keepalive(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    lease_id: int = ns.id

    def show(i: int, ttl: int) -> None:
        if ctx.fmt == "json":
            ctx.json({"ID": i, "TTL": ttl})
        else:
            ctx.print(f"lease {i:016x} keepalived with TTL({ttl})")
        ctx.out.flush()

    def gone() -> int:
        ctx.err.write(f"Error: lease {lease_id:016x} expired or revoked\n")
        return 1

    if ns.once:
        ttl = await client.lease_keepalive_once(lease_id)
        if ttl <= 0:
            return gone()
        show(lease_id, ttl)
        return 0
    keeper = client.keepalive_manager()
    lost = asyncio.Event()
    try:
        started = keeper.clock.now()
        t = await client.lease_time_to_live(lease_id)
        if t.ttl <= 0:
            return gone()
        keeper.keep(
            lease_id,
            t.granted_ttl,
            lambda _i: lost.set(),
            on_renew=show,
            alive_for=t.ttl - (keeper.clock.now() - started),
        )
        await lost.wait()
    except asyncio.CancelledError:
        return _interrupted()
    finally:
        keeper.forget(lease_id)
    return gone()
