"""TEST ONLY: the concurrent workload the fault tests record.

`Workload` runs the mixed load against real nodes until told to stop: register clients (get,
put, delete, txn compare-and-set), lease clients (grant, attach a key, keep alive, revoke, and
a live check that no lease expires before its TTL), and watchers, all recorded. Every
operation goes through the `RegistryClient` protocol of the chosen backend: raftreg's
`GrpcRegistryClient`, or `raftreg.client.etcd.EtcdRegistryClient` against a real etcd
(`backend="etcd"`). Watchers: the client's resumable `Watch` over all endpoints, plus one per
node: for raftreg a raw per-node Watch stream that resumes itself (raftreg's own stubs), for
etcd the client's `Watch` on a client pinned to that member (nothing etcd-specific here).
"""


from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raftreg.client import GrpcRegistryClient, RegistryClient
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import Compare, CompareResult, CompareTarget, Put, Txn
from raftreg.testing.history.records import LEASED, PREFIX, REG, History, WatchRecord
from raftreg.testing.history.watchers import client_watch, raw_watch

BACKENDS = ("raftreg", "etcd")


@dataclass(frozen=True)
class WorkloadConfig:
    keys: int = 3
    register_clients: int = 5
    lease_clients: int = 1
    lease_ttl: int = 3
    op_timeout: float = 1.0  # per attempt
    op_budget: float = 2.0  # per operation, with retries
    think_ms: float = 25.0  # mean pause between one client's operations


class Workload:
    """Concurrent recorded clients against `endpoints` (of a raftreg cluster, or of a real etcd
    with `backend="etcd"`) until `stop` is set."""

    def __init__(
        self,
        endpoints: Sequence[str],
        history: History,
        rng: random.Random,
        cfg: WorkloadConfig | None = None,
        *,
        backend: str = "raftreg",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        self.backend = backend
        self.endpoints = list(endpoints)
        self.h = history
        self.rng = rng
        self.cfg = cfg or WorkloadConfig()
        self.keys = [f"{REG}k{i}" for i in range(self.cfg.keys)]
        self.watches: list[WatchRecord] = []
        self._clients: list[RegistryClient] = []

    def _client(self, endpoints: Sequence[str]) -> RegistryClient:
        c: RegistryClient
        if self.backend == "etcd":
            c = EtcdRegistryClient(
                list(endpoints),
                timeout=self.cfg.op_timeout,
                connect_timeout=min(0.5, self.cfg.op_timeout),
                retry_budget=self.cfg.op_budget,
                failure_penalty=1.0,
            )
        else:
            c = GrpcRegistryClient(
                list(endpoints),
                timeout=self.cfg.op_timeout,
                connect_timeout=min(0.5, self.cfg.op_timeout),
                retry_budget=self.cfg.op_budget,
                failure_penalty=1.0,
            )
        self._clients.append(c)
        return c

    async def _think(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.rng.expovariate(1000 / self.cfg.think_ms))

    async def _timed(self, aw: Any) -> Any:
        return await asyncio.wait_for(aw, self.cfg.op_budget + 3.0)

    # -- register clients --------------------------------------------------------------------

    async def register_client(self, cid: int, stop: asyncio.Event) -> None:
        # Clients 0 and 1 follow the leader; the others are pinned to one node each and mostly
        # read (so reads are served by followers and by nodes cut off from the majority).
        pinned = cid >= 2
        eps = [self.endpoints[(cid - 2) % len(self.endpoints)]] if pinned else self.endpoints
        c = self._client(eps)
        ep = eps[0] if pinned else ""
        rng = random.Random(self.rng.getrandbits(64))
        seen: dict[str, str | None] = {}
        seq = 0
        while not stop.is_set():
            key = rng.choice(self.keys)
            r = rng.random()
            seq += 1
            value = f"c{cid}-{seq}"
            if pinned:  # mostly reads: what a node cut off from the majority serves
                r = 0.0 if r < 0.85 else 0.35 + (r - 0.85) / 0.15 * 0.65
            try:
                if r < 0.35:
                    op = self.h.invoke(cid, "get", key, endpoint=ep)
                    res = await self._timed(c.get(key))
                    got = res.kvs[0].value.decode() if res.kvs else None
                    seen[key] = got
                    self.h.ok(op, got, res.revision)
                elif r < 0.65:
                    op = self.h.invoke(cid, "put", key, value=value, endpoint=ep)
                    pr = await self._timed(c.put(key, value))
                    seen[key] = value
                    self.h.ok(op, None, pr.revision)
                elif r < 0.75:
                    op = self.h.invoke(cid, "delete", key, endpoint=ep)
                    dr = await self._timed(c.delete(key))
                    seen[key] = None
                    self.h.ok(op, dr.deleted, dr.revision)
                else:
                    expected = seen.get(key)
                    if expected is None:
                        other = rng.randrange(self.cfg.register_clients)
                        expected = f"c{other}-{rng.randrange(1, seq + 1)}"
                    op = self.h.invoke(
                        cid, "cas", key, value=value, expected=expected, endpoint=ep
                    )
                    txn = Txn(
                        compare=(
                            Compare(
                                key.encode(), CompareTarget.VALUE, CompareResult.EQUAL,
                                expected.encode(),
                            ),
                        ),
                        success=(Put(key.encode(), value.encode()),),
                    )
                    tr = await self._timed(c.txn(txn))
                    if tr.succeeded:
                        seen[key] = value
                    self.h.ok(op, tr.succeeded, tr.revision)
            except Exception as e:
                self.h.failed(op, e)
                seen.pop(key, None)
            await self._think(stop)

    # -- lease clients -----------------------------------------------------------------------

    async def lease_client(self, cid: int, stop: asyncio.Event) -> None:
        """Grant, attach a key, keep alive for a while, then revoke or abandon; after every
        acknowledged renewal (and the grant) the key must stay readable until call + TTL."""
        c = self._client(self.endpoints)
        rng = random.Random(self.rng.getrandbits(64))
        ttl = self.cfg.lease_ttl
        n = 0
        while not stop.is_set():
            n += 1
            op = self.h.invoke(cid, "lease_grant", "")
            try:
                g = await self._timed(c.lease_grant(ttl))
                self.h.ok(op, g.id, g.revision)
            except Exception as e:
                self.h.failed(op, e)
                await self._think(stop)
                continue
            lid, safe_until = g.id, op.call + ttl
            key = f"{LEASED}{lid:x}/{n}"
            op = self.h.invoke(cid, "lease_put", key, value=f"l{cid}-{n}", lease=lid)
            try:
                pr = await self._timed(c.put(key, f"l{cid}-{n}", lease=lid))
                self.h.ok(op, None, pr.revision)
                attached = True
            except Exception as e:
                self.h.failed(op, e)
                attached = False
            for _ in range(rng.randint(2, 8)):
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.uniform(0.2, 0.4) * ttl)
                op = self.h.invoke(cid, "lease_keepalive", key, lease=lid)
                try:
                    left = await self._timed(c.lease_keepalive_once(lid))
                    self.h.ok(op, left)
                except Exception as e:
                    self.h.failed(op, e)
                    continue
                if left <= 0:
                    if op.ret is not None and op.ret < safe_until:
                        self.h.violations.append(
                            f"lease {lid:x} lost at {op.ret:.3f} (keepalive answered 0) before "
                            f"its TTL ran out at {safe_until:.3f}"
                        )
                    break
                safe_until = max(safe_until, op.call + ttl)
                if attached:
                    op = self.h.invoke(cid, "lease_get", key, lease=lid)
                    try:
                        res = await self._timed(c.get(key))
                        self.h.ok(op, len(res.kvs), res.revision)
                    except Exception as e:
                        self.h.failed(op, e)
                        continue
                    if not res.kvs and op.ret is not None and op.ret < safe_until:
                        self.h.violations.append(
                            f"lease {lid:x}: key {key} gone at {op.ret:.3f} (revision "
                            f"{res.revision}) before the TTL ran out at {safe_until:.3f}"
                        )
                        break
            if rng.random() < 0.6 and not stop.is_set():
                op = self.h.invoke(cid, "lease_revoke", key, lease=lid)
                try:
                    await self._timed(c.lease_revoke(lid))
                    self.h.ok(op)
                except Exception as e:
                    self.h.failed(op, e)

    # -- everything --------------------------------------------------------------------------

    def start(
        self, stop_ops: asyncio.Event, stop_watches: asyncio.Event, watch_from: int = 1
    ) -> tuple[list[asyncio.Future[None]], list[asyncio.Future[None]]]:
        """Start the clients (until `stop_ops`) and the watchers (until `stop_watches`, so
        they can catch up after the faults are healed); returns both groups of tasks."""
        key, end = PREFIX.encode(), prefix_range_end(PREFIX.encode())
        ops: list[asyncio.Future[None]] = [
            asyncio.ensure_future(self.register_client(i, stop_ops))
            for i in range(self.cfg.register_clients)
        ]
        base = self.cfg.register_clients
        ops += [
            asyncio.ensure_future(self.lease_client(base + i, stop_ops))
            for i in range(self.cfg.lease_clients)
        ]
        watches: list[asyncio.Future[None]] = []
        for i, ep in enumerate(self.endpoints):
            if self.backend == "etcd":  # the client's Watch, pinned to one member
                rec = WatchRecord(f"client@e{i + 1}", key, end, prev_kv=True)
                self.watches.append(rec)
                watches.append(asyncio.ensure_future(
                    client_watch(self._client([ep]), rec, watch_from, stop_watches)))
                continue
            rec = WatchRecord(f"raw@n{i + 1}", key, end, prev_kv=True)
            self.watches.append(rec)
            watches.append(asyncio.ensure_future(raw_watch(ep, rec, watch_from, stop_watches)))
        rec = WatchRecord("client", key, end, prev_kv=True)
        self.watches.append(rec)
        wc = self._client(self.endpoints)
        watches.append(asyncio.ensure_future(client_watch(wc, rec, watch_from, stop_watches)))
        return ops, watches

    async def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                await c.close()
