"""The backup commands: `snapshot save` (from the running cluster, raftreg backend only, with
a progress line on a terminal) and the offline `snapshot status` (verify and describe a backup
file) and `snapshot restore` (seed the data dirs of a new cluster; needs the server extra).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from raftreg.cli.connect import _raftreg_only
from raftreg.cli.output import _Ctx
from raftreg.client.protocol import RegistryClient
from raftreg.config import load_config
from raftreg.errors import FailedPrecondition
from raftreg.store import Store
from raftreg.store.backup import Backup, decode_backup


async def cmd_snapshot_save(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "snapshot save")
    show = _progress_line(ctx, "received")
    blob = await c.snapshot(timeout=max(ctx.timeout, 60.0), progress=show)
    show(-1, -1)
    backup = decode_backup(blob)  # verify before anything is written
    path = Path(ns.file)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    if ctx.fmt == "json":
        ctx.json({"file": str(path), "revision": backup.revision, "size": len(blob),
                  "sha256": backup.sha256})
    else:
        ctx.print(f"Snapshot saved at {path} (revision {backup.revision}, {len(blob)} bytes)")
    return 0


def _progress_line(ctx: _Ctx, verb: str) -> Callable[[int, int], None]:
    """`show(done, total)`: one self-overwriting "verb X of Y MiB" line on stderr when stderr is
    a terminal, nothing otherwise; `show(-1, -1)` ends the line."""
    live = ctx.err.isatty()

    def show(done: int, total: int) -> None:
        if not live:
            return
        if done < 0:
            ctx.err.write("\n")
        else:
            ctx.err.write(f"\r{verb} {done / 2**20:.1f} of {total / 2**20:.1f} MiB")
        ctx.err.flush()

    return show


def _read_backup(file: str) -> tuple[bytes, Backup]:
    blob = Path(file).read_bytes()
    return blob, decode_backup(blob)


def cmd_snapshot_status(ns: argparse.Namespace, ctx: _Ctx) -> int:
    blob, b = _read_backup(ns.file)
    store = Store()
    store.restore(b.state)
    doc = {"cluster": b.cluster, "revision": b.revision, "keys": store.key_count(),
           "leases": len(store.leases()), "hash": f"{store.hash():x}", "size": len(blob),
           "sha256": b.sha256, "created_at_ms": b.created_at_ms}
    if ctx.fmt == "json":
        ctx.json(doc)
    elif ctx.fmt == "table":
        ctx.table(tuple(k.upper() for k in doc), [list(doc.values())])
    else:
        ctx.print(", ".join(f"{k}={v}" for k, v in doc.items()))
    return 0


def cmd_snapshot_restore(ns: argparse.Namespace, ctx: _Ctx) -> int:
    try:
        from raftreg.server.restore import restore_cluster  # offline tool: loads server code
    except ModuleNotFoundError as e:
        raise FailedPrecondition(f"restoring needs the server extra ({e.name} is missing): "
                                 "pip install 'raftreg[server]'") from None

    cfg = load_config(ns.config)
    backup, dirs = restore_cluster(cfg, Path(ns.file).read_bytes(), ns.name or ())
    for d in dirs:
        ctx.print(f"restored revision {backup.revision} into {d}")
    ctx.print("Start every member of the new cluster (without --join).")
    return 0
