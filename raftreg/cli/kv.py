"""The key-value commands: `put`, `get`, `del`, `txn` (read from stdin in etcdctl's format)
and `compaction`.
"""

from __future__ import annotations

import argparse

from raftreg.cli.output import _Ctx, _print_result, simple_lines
from raftreg.cli.txn import _delete_op, _put_op, _range_op, read_txn
from raftreg.client.protocol import RegistryClient


async def cmd_put(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    op = _put_op(ns)
    _print_result(ctx, await client.put(op.key, op.value, lease=op.lease, prev_kv=op.prev_kv))
    return 0


async def cmd_get(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    r = _range_op(ns)
    res = await client.get(
        r.key,
        range_end=r.range_end,
        revision=r.revision,
        limit=r.limit,
        keys_only=r.keys_only,
        count_only=r.count_only,
        serializable=ns.consistency == "s",
        sort_order=r.sort_order,
        sort_target=r.sort_target,
    )
    if ctx.fmt == "simple" and r.count_only:
        ctx.print(str(res.count))
    elif ctx.fmt == "simple":
        ctx.print(*simple_lines(res, keys_only=r.keys_only, value_only=ns.print_value_only))
    else:
        _print_result(ctx, res)
    return 0


async def cmd_del(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    d = _delete_op(ns)
    _print_result(ctx, await client.delete(d.key, range_end=d.range_end, prev_kv=d.prev_kv))
    return 0


async def cmd_txn(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    interactive = ctx.stdin.isatty()

    def prompt(title: str) -> None:
        ctx.err.write(title + "\n")
        ctx.err.flush()

    txn = read_txn(iter(ctx.stdin), prompt if interactive else None)
    _print_result(ctx, await client.txn(txn))
    return 0


async def cmd_compaction(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    rev = await client.compact(ns.revision)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}})
    else:
        ctx.print(f"compacted revision {ns.revision}")
    return 0
