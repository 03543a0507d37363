"""`watch KEY [RANGE_END]`: print the changes of a key or range until Ctrl-C (exit 0); exit 1
with an error line when the watch is compacted.
"""

from __future__ import annotations

import argparse
import asyncio

from raftreg.cli.output import _Ctx, _interrupted, watch_json, watch_lines
from raftreg.cli.txn import _range_bounds
from raftreg.client.protocol import RegistryClient
from raftreg.errors import InvalidArgument


async def cmd_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    key, end = _range_bounds(ns)
    if ns.rev < 0:
        raise InvalidArgument("--rev must be >= 0")
    try:
        w = await client.watch(
            key,
            range_end=end,
            start_revision=ns.rev,
            prev_kv=ns.prev_kv,
            progress_notify=ns.progress_notify,
        )
        async with w:
            async for batch in w:
                if ctx.fmt == "json":
                    ctx.json(watch_json(batch))
                elif not batch.compacted:
                    ctx.print(*watch_lines(batch))
                ctx.out.flush()
                if batch.compacted:
                    ctx.err.write(
                        "Error: watch was canceled: required revision has been compacted "
                        f"(compact revision {batch.compact_revision})\n"
                    )
                    return 1
    except asyncio.CancelledError:
        return _interrupted()
    return 0
