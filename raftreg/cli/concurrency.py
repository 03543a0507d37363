"""`lock` and `elect`: etcdctl's commands on `raftreg.concurrency` (same key layout, so they
exclude etcdctl's own on an etcd backend). `lock NAME [CMD ...]` runs CMD while holding the lock
(which outlives CMD) or holds until Ctrl-C; `elect NAME PROPOSAL` campaigns and leads until
Ctrl-C, `elect NAME` prints each new leader. A lost session lease is exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from raftreg.cli.output import _Ctx, _interrupted, _text, kv_json
from raftreg.client.protocol import RegistryClient
from raftreg.common.types import KeyValue
from raftreg.concurrency import Election, Lock, Session, observe
from raftreg.errors import NotFound


def _show_kv(ctx: _Ctx, kv: KeyValue) -> None:
    """etcdctl's output for `lock`/`elect`: the key, then the value (`elect` only), or the
    key-value as JSON."""
    if ctx.fmt == "json":
        ctx.json(kv_json(kv))
    else:
        ctx.print(_text(kv.key), *([_text(kv.value)] if kv.value else []))
    ctx.out.flush()


async def _own_kv(client: RegistryClient, key: bytes) -> KeyValue:
    r = await client.get(key)
    if not r.kvs:
        raise NotFound(f"{_text(key)} is gone (session lease lost?)")
    return r.kvs[0]


async def _run_holding(session: Session, lock: Lock, argv: Sequence[str], ctx: _Ctx) -> int:
    """Run `argv` while holding `lock`; it never outlives the lock: on a lost session or
    Ctrl-C it is terminated (killed after 5 s) before this returns."""
    key = _text(lock.key)
    env = dict(os.environ, RAFTREG_LOCK_KEY=key, RAFTREG_LOCK_REV=str(lock.revision),
               ETCD_LOCK_KEY=key, ETCD_LOCK_REV=str(lock.revision))
    proc = await asyncio.create_subprocess_exec(*argv, env=env)
    ended = asyncio.ensure_future(proc.wait())
    lost = asyncio.ensure_future(session.wait_lost())
    try:
        await asyncio.wait({ended, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait({ended}, timeout=5.0)
            if proc.returncode is None:
                proc.kill()
                await ended
    rc = proc.returncode
    assert rc is not None
    if lost.done() and not lost.cancelled():
        ctx.err.write(f"Error: the lock {key} was lost (session lease expired); "
                      "the command was terminated\n")
        return 1
    return rc if rc >= 0 else 128 - rc


async def cmd_lock(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    async with Session(client, ttl=ns.ttl) as session:
        lock = Lock(session, ns.name)
        try:
            await lock.acquire()
        except asyncio.CancelledError:  # Ctrl-C while waiting: the acquire left no key
            return _interrupted()
        try:
            _show_kv(ctx, await _own_kv(client, lock.key))
            if ns.cmd:
                return await _run_holding(session, lock, ns.cmd, ctx)
            await session.wait_lost()
            ctx.err.write(f"Error: the lock {_text(lock.key)} was lost "
                          "(session lease expired)\n")
            return 1
        except asyncio.CancelledError:
            return _interrupted()
        finally:
            await lock.release()


async def cmd_elect(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    if ns.proposal is None:
        try:
            async with observe(client, ns.name) as leaders:
                async for kv in leaders:
                    _show_kv(ctx, kv)
        except asyncio.CancelledError:
            return _interrupted()
        return 0
    async with Session(client, ttl=ns.ttl) as session:
        election = Election(session, ns.name)
        try:
            await election.campaign(ns.proposal)
            _show_kv(ctx, await _own_kv(client, election.key))
            await session.wait_lost()
            ctx.err.write("Error: no longer the leader (session lease expired)\n")
            return 1
        except asyncio.CancelledError:
            return _interrupted()
        finally:
            await election.resign()
