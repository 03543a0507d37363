"""Recorded client histories for the fault tests, and the concurrent workload that makes them.

A `History` holds one `Op` per client operation: who issued it, its invocation and completion
times (`time.monotonic()`, which on Linux is one clock for every process on the machine, so
client times compare with the lease deadlines the leader keeps), its input, its output and its
outcome:

- ``ok``: the response was seen (`output` holds it, `revision` the header revision of a write);
- ``fail``: the operation certainly had no effect (a refused write: `NotApplied`, or an error
  outside `Unavailable` such as `InvalidArgument`); reads that failed are kept as ``fail`` too
  and are simply not checked;
- ``unknown``: a write whose fate is ambiguous (`OutcomeUnknown`, a deadline, any other
  `Unavailable`): it may have applied at any time after its call, or never (``ret is None``).

`History.lincheck_ops()` turns the register part (a few keys, every value unique) into
`raftreg.testing.lincheck` operations for the per-key `KVModel`.

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
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import grpc

from raftreg import errors as E
from raftreg.client import GrpcRegistryClient, RegistryClient
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.convert import event_from_pb
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import Compare, CompareResult, CompareTarget, Event, Put, Txn
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import lincheck as L

Outcome = Literal["ok", "fail", "unknown"]
PREFIX = "/f/"  # every key the workload touches
REG = PREFIX + "r/"  # register keys (linearizability-checked)
LEASED = PREFIX + "l/"  # keys attached to leases
WRITE_KINDS = frozenset({"put", "delete", "cas", "lease_grant", "lease_put", "lease_revoke"})
BACKENDS = ("raftreg", "etcd")


@dataclass(slots=True)
class Op:
    id: int
    client: int
    kind: str  # get put delete cas | lease_grant lease_put lease_keepalive lease_revoke lease_get
    key: str
    call: float
    value: str | None = None  # put / cas new value
    expected: str | None = None  # cas: expected value
    lease: int = 0
    ret: float | None = None
    outcome: Outcome = "unknown"
    output: Any = None  # get: value or None; delete: deleted; cas: succeeded; keepalive: ttl
    revision: int = 0  # header revision of a completed write
    error: str = ""
    endpoint: str = ""  # the only endpoint of a pinned client, "" = any


def _classify(e: BaseException, write: bool) -> tuple[Outcome, str]:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, E.Unavailable | E.DeadlineExceeded | TimeoutError) and not isinstance(
        e, E.NotApplied
    ):
        return ("unknown" if write else "fail"), text
    if isinstance(e, E.RegistryError):
        return "fail", text
    return ("unknown" if write else "fail"), "UNEXPECTED " + text


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # found while running (lease checks)
    unexpected: list[str] = field(default_factory=list)  # exceptions outside the error tree

    def invoke(self, client: int, kind: str, key: str, **kw: Any) -> Op:
        op = Op(len(self.ops), client, kind, key, time.monotonic(), **kw)
        self.ops.append(op)
        return op

    def ok(self, op: Op, output: Any = None, revision: int = 0) -> None:
        op.ret, op.outcome, op.output, op.revision = time.monotonic(), "ok", output, revision

    def failed(self, op: Op, e: BaseException) -> None:
        op.outcome, op.error = _classify(e, op.kind in WRITE_KINDS)
        if op.outcome == "fail":
            op.ret = time.monotonic()
        if op.error.startswith("UNEXPECTED"):
            self.unexpected.append(f"op {op.id} {op.kind} {op.key}: {op.error}")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            k = f"{op.kind}:{op.outcome}"
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def lincheck_ops(self) -> list[L.Operation]:
        """The register operations as lincheck input: ok ones with their response, unknown
        writes with ret=None, failed ones left out."""
        out: list[L.Operation] = []
        for op in self.ops:
            if not op.key.startswith(REG) or op.outcome == "fail":
                continue
            ret = op.ret if op.outcome == "ok" else None
            if op.kind == "get":
                if ret is None:
                    continue
                out.append(L.Operation(op.client, op.call, ret, L.Get(op.key), op.output))
            elif op.kind == "put":
                out.append(L.Operation(op.client, op.call, ret, L.Put(op.key, op.value)))
            elif op.kind == "delete":
                out.append(L.Operation(op.client, op.call, ret, L.Delete(op.key), op.output))
            elif op.kind == "cas":
                inp = L.Cas(op.key, op.expected, op.value)
                out.append(L.Operation(op.client, op.call, ret, inp, op.output))
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(op) for op in self.ops]


# ---------------------------------------------------------------------------------------------
# Watch recordings


@dataclass
class WatchRecord:
    """One watch as its consumer saw it: `segments` are the server streams it lived on (one
    for a raw stream per re-create; one overall for the client's resumable `Watch`), each
    (start_revision, [(header revision, events)]). `end_error` is set if it ended for good."""

    name: str
    key: bytes
    range_end: bytes
    prev_kv: bool
    segments: list[tuple[int, list[tuple[int, list[Event]]]]] = field(default_factory=list)
    end_error: str = ""

    @property
    def last_revision(self) -> int:
        for _, batches in reversed(self.segments):
            for _, events in reversed(batches):
                if events:
                    return events[-1].kv.mod_revision
        return 0


# Test-side channels: a private subchannel pool and short reconnect backoff, so a node that
# was killed and restarted is reached again at once (gRPC's shared subchannels otherwise keep
# answering "connection refused" from a cached failure for up to two minutes).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


async def raw_watch(
    endpoint: str,
    rec: WatchRecord,
    start_revision: int,
    stop: asyncio.Event,
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    """A raw Watch stream on one node, re-created from last revision + 1 after any failure
    (on the same node), recorded segment by segment until `stop`."""
    next_rev = start_revision
    while not stop.is_set():
        ch = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()

        async def it(q: asyncio.Queue[pb.WatchRequest | None] = requests) -> AsyncIterator[
            pb.WatchRequest
        ]:
            while (r := await q.get()) is not None:
                yield r

        call: Any = pbg.WatchStub(ch).Watch(it())
        requests.put_nowait(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=rec.key,
                    range_end=rec.range_end,
                    start_revision=next_rev,
                    prev_kv=rec.prev_kv,
                )
            )
        )
        batches: list[tuple[int, list[Event]]] = []
        rec.segments.append((next_rev, batches))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                reader = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({reader, stopper}, return_when="FIRST_COMPLETED")
                if reader not in done:
                    reader.cancel()
                    return
                resp = reader.result()
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                if resp.canceled:
                    rec.end_error = f"canceled: {resp.cancel_reason} ({resp.compact_revision})"
                    return
                if resp.events:
                    evs = [event_from_pb(e) for e in resp.events]
                    batches.append((int(resp.header.revision), evs))
                    next_rev = evs[-1].kv.mod_revision + 1
                    if progress is not None:
                        progress(evs[-1].kv.mod_revision)
        except grpc.aio.AioRpcError:
            pass
        finally:
            stopper.cancel()
            requests.put_nowait(None)
            call.cancel()
            await ch.close(None)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def client_watch(
    client: RegistryClient, rec: WatchRecord, start_revision: int, stop: asyncio.Event
) -> None:
    """The client's resumable `Watch`, recorded as one segment until `stop`."""
    batches: list[tuple[int, list[Event]]] = []
    rec.segments.append((start_revision, batches))
    try:
        w = await client.watch(
            rec.key, range_end=rec.range_end, start_revision=start_revision, prev_kv=rec.prev_kv
        )
    except E.RegistryError as e:
        rec.end_error = f"create failed: {e}"
        return
    stopper = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[Any] | None = None
    try:
        it = w.__aiter__()
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({nxt, stopper}, return_when="FIRST_COMPLETED")
            if nxt not in done:
                nxt.cancel()
                return
            try:
                b = nxt.result()
            except StopAsyncIteration:
                rec.end_error = "iteration ended"
                return
            except E.RegistryError as e:
                rec.end_error = f"failed: {e}"
                return
            if b.compacted:
                rec.end_error = f"compacted at {b.compact_revision}"
                return
            if b.events:
                batches.append((b.revision, list(b.events)))
    finally:
        stopper.cancel()
        w.cancel()
        if nxt is not None and nxt.done() and not nxt.cancelled():
            nxt.exception()  # retrieved: no "exception was never retrieved" noise


# ---------------------------------------------------------------------------------------------
# The workload


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
