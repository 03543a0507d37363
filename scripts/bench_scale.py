"""Registry scale: N registered instances held, M watchers, raftreg and etcd side by side.

    .venv/bin/python scripts/bench_scale.py [--instances N] [--procs P] [--watchers M]
        [--hold S] [--backend raftreg|etcd|both] [--json FILE]

Per backend (a three-node cluster on loopback, started and killed by this script; one backend
at a time, so they never compete for the cores):
- P registrar processes (`--procs`) share the N instances (`--instances`): each registers its
  share as `/services/scale/i<k>` (JSON, the reference document's layout) through
  `raftreg.discovery.Registration`, one lease each, TTL `--ttl` (10 s), over ONE client
  (`raftreg.client.connect`, so one keepalive stream renewing all its leases about every
  TTL/3), at most `--reg-inflight` first registrations in flight per process.
- M watchers (`--watchers`) follow the prefix `/services/scale/` by list-then-watch
  (`raftreg.client.mirror.PrefixMirror`, the loop inside every `Resolver`, with the Resolver's
  1 s progress interval, `--progress`), each keeping the set of keys it sees. They are spread
  over ceil(M / `--watchers-per-proc`) watcher processes (default 100 per process), and inside
  a process round-robin over `--watch-conns` clients (default 4); each client multiplexes its
  watches over ONE Watch stream. So M=200 is 2 processes x 4 streams x 25 watches. They keep
  key sets, not `Instance` objects: 1,000 full Resolvers decoding and sorting N instances on
  every batch would measure this 2-core machine's Python, not the registry.
- one real `Resolver(client, "scale")` in this process.
The watchers are started and have listed (empty) before the registrars are told to go; the
registrar processes are started and connected before too, so t0 = the "go" and process start-up
is not counted.

Figures:
- "registered": t0 -> every Registration of every registrar has succeeded once.
- "visible to a resolver": t0 -> the Resolver in this process holds all N instances.
- "visible to all M watchers": t0 -> the last of the M watchers holds all N keys.
  Not converging within `--converge-timeout` shows "-" (the counts are printed).
- hold: after convergence everything is held for `--hold` seconds (longer than the TTL, so
  every lease must have been renewed at least once), then the config changes below are made.
- wrong removals: instance keys that disappeared from a watcher's view (a DELETE event, or
  missing from a re-list) or from the Resolver while their registrar process was alive (all of
  them always are: this script kills no registrar) — "fill" counts those during the fill phase
  (t0 -> convergence), "hold" those from convergence to the end of the change measurements.
  Both must be 0. Figures: distinct keys removed (any watcher or the resolver) and removal
  events summed over the M watchers. Re-registrations (a Registration that lost its lease and
  registered again, `Registration.registrations - 1`) are counted too.
- server CPU: the sum over the three server processes (raftreg node / etcd member pids, from
  `ProcessGroup.procs`) of user+sys CPU seconds during the hold (/proc/<pid>/stat), divided by
  the hold time: cores busy holding N leases and M idle watches. The same for this benchmark's
  client processes (registrars + watchers), for context: they share the 2 cores.
- RSS per node: VmRSS of each server process at the end of the hold (/proc/<pid>/status),
  max and mean of the three, MiB.
- config change -> all M watchers: a put of one key under the watched prefix
  (`/services/scale/probe-<r>`, a valid instance document without lease; watchers and resolver
  do not count it as an instance), from put sent to the moment the LAST of the M watchers has
  it (times are CLOCK_MONOTONIC, the same in every process of the machine); median and max
  over `--changes` repetitions (5), each followed by a delete of the key.
Ratio = raftreg / etcd (> 1: raftreg took longer / used more). The load average is printed
before and after each backend: other work on the machine skews every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raftreg.client import connect
from raftreg.client.mirror import PrefixMirror
from raftreg.client.protocol import RegistryClient
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.discovery import Instance, Registration, Resolver
from raftreg.discovery.instance import encode_instance
from raftreg.errors import RegistryError
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.procs import ProcessGroup

SERVICE = "scale"
PREFIX = f"/services/{SERVICE}/"
PROBE = b"probe-"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def instance(k: int) -> Instance:
    return Instance(SERVICE, f"i{k:06d}", f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}:8080")


def die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def say(*words: object) -> None:
    print(*words, flush=True)


async def stdin_lines() -> asyncio.Queue[str]:
    q: asyncio.Queue[str] = asyncio.Queue()

    def pump(loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(q.put_nowait, line.strip())
        loop.call_soon_threadsafe(q.put_nowait, "EOF")

    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, pump, loop)
    return q


# ------------------------------------------------------------------------- registrar process


async def registrar(url: str, first: int, count: int, ttl: int, inflight: int) -> None:
    client = connect(url, timeout=10.0)
    await client.get("/bench-scale-warm")  # connected before the go
    cmds = await stdin_lines()
    say("READY")
    if await cmds.get() != "GO":
        return
    regs = [Registration(client, instance(k), ttl=ttl) for k in range(first, first + count)]
    sem = asyncio.Semaphore(inflight)

    async def one(reg: Registration) -> None:
        async with sem:
            await reg.start(wait=False)
            await reg.wait_registered(None)

    async def report() -> None:
        while True:
            say("REG", sum(r.registered for r in regs), sum(r.registrations for r in regs))
            await asyncio.sleep(5)

    async def register_all() -> None:
        await asyncio.gather(*(one(r) for r in regs))
        say("DONE", time.monotonic())

    reporter = asyncio.create_task(report())
    filling = asyncio.create_task(register_all())  # STATS is answered even if it never ends
    while (cmd := await cmds.get()) not in ("EOF", "QUIT"):
        if cmd == "STATS":
            reporter.cancel()
            filling.cancel()
            say("STATS", json.dumps({
                "n": count, "registrations": sum(r.registrations for r in regs),
                "registered_now": sum(r.registered for r in regs),
            }))


# --------------------------------------------------------------------------- watcher process


class View:
    """One watcher's copy of the prefix: the instance keys, removals, probes seen."""

    def __init__(self, owner: WatcherProc) -> None:
        self.owner = owner
        self.keys: set[bytes] = set()
        self.listed = False
        self.full_at: float | None = None
        self.relists = 0
        self.mirror: PrefixMirror | None = None

    def _removed(self, key: bytes) -> None:
        self.owner.removals.append((key.decode(), time.monotonic()))

    def _put(self, key: bytes) -> None:
        if PROBE in key:
            self.owner.probe_seen(key.rsplit(b"/", 1)[1].decode(), self)
        else:
            self.keys.add(key)

    async def on_snapshot(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        new = {kv.key for kv in kvs if PROBE not in kv.key}
        if self.listed:
            self.relists += 1
            for k in self.keys - new:
                self._removed(k)
        self.keys = new
        self.listed = True
        for kv in kvs:
            if PROBE in kv.key:
                self._put(kv.key)
        self._check()

    async def on_events(self, events: tuple[Event, ...], revision: int) -> None:
        for e in events:
            if e.type == EventType.DELETE:
                if e.kv.key in self.keys:
                    self.keys.discard(e.kv.key)
                    self._removed(e.kv.key)
            else:
                self._put(e.kv.key)
        self._check()

    def _check(self) -> None:
        if self.full_at is None and len(self.keys) >= self.owner.n:
            self.full_at = time.monotonic()
            self.owner.view_full()


class WatcherProc:
    def __init__(self, n: int) -> None:
        self.n = n
        self.views: list[View] = []
        self.removals: list[tuple[str, float]] = []
        self.probes: dict[str, dict[int, float]] = defaultdict(dict)
        self.full_said = False

    def view_full(self) -> None:
        if not self.full_said and all(v.full_at is not None for v in self.views):
            self.full_said = True
            say("FULL", max(v.full_at or 0.0 for v in self.views))

    def probe_seen(self, tag: str, view: View) -> None:
        seen = self.probes[tag]
        if id(view) not in seen:
            seen[id(view)] = time.monotonic()
            if len(seen) == len(self.views):
                say("SEEN", tag, max(seen.values()))


async def watcher(url: str, views: int, conns: int, n: int, progress: float) -> None:
    clients = [connect(url, timeout=10.0) for _ in range(conns)]
    proc = WatcherProc(n)
    for i in range(views):
        v = View(proc)
        v.mirror = PrefixMirror(clients[i % conns], PREFIX, on_snapshot=v.on_snapshot,
                                on_events=v.on_events, progress_interval=progress or None,
                                label=f"watcher {i}")
        proc.views.append(v)
    cmds = await stdin_lines()
    for v in proc.views:
        assert v.mirror is not None
        v.mirror.start()
    for v in proc.views:
        assert v.mirror is not None
        await v.mirror.wait_synced()
    say("READY")

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            counts = [len(v.keys) for v in proc.views]
            say("COUNT", min(counts), len(proc.removals), sum(v.relists for v in proc.views))

    reporter = asyncio.create_task(report())
    while (cmd := await cmds.get()) not in ("EOF", "QUIT"):
        if cmd == "STATS":
            reporter.cancel()
            counts = [len(v.keys) for v in proc.views]
            say("STATS", json.dumps({
                "removals": proc.removals[:5000], "removal_events": len(proc.removals),
                "relists": sum(v.relists for v in proc.views),
                "min_count": min(counts), "max_count": max(counts),
            }))


def child_main(argv: Sequence[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    die_with_parent(int(argv[1]))
    if argv[0] == "registrar":
        asyncio.run(registrar(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6])))
    else:
        asyncio.run(watcher(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), float(argv[6])))


# ------------------------------------------------------------------------------- the parent


class Child:
    """A child process of this script; lines it prints are queued by their first word."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.proc = proc
        self.name = name
        self.log = log
        self.queues: dict[str, asyncio.Queue[list[str]]] = defaultdict(asyncio.Queue)
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, log: Path, *args: object) -> Child:
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "--child", *map(str, args),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=64 << 20,
            )
        return cls(proc, name, log)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            word, _, rest = line.decode().rstrip("\n").partition(" ")
            self.queues[word].put_nowait(rest.split(" ", 1) if word == "SEEN" else [rest])
        self.queues["EXIT"].put_nowait([])

    async def expect(self, word: str, timeout: float | None) -> list[str]:
        get = asyncio.ensure_future(self.queues[word].get())
        gone = asyncio.ensure_future(self.queues["EXIT"].get())
        try:
            done, _ = await asyncio.wait({get, gone}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            get.cancel()
            gone.cancel()
        if get in done:
            return get.result()
        if gone in done:
            self.queues["EXIT"].put_nowait([])
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")
        raise TimeoutError(f"{self.name}: no {word} within {timeout} s")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        self.reader.cancel()


def latest(c: Child, word: str) -> list[str] | None:
    """The last line `word` that `c` printed (the queue is drained)."""
    last = None
    q = c.queues[word]
    while not q.empty():
        last = q.get_nowait()
    if last is not None:
        q.put_nowait(last)  # keep it for the next call
    return last


def progress(regs: list[Child], watchers: list[Child]) -> str:
    reg = [x[0].split() for c in regs if (x := latest(c, "REG"))]
    cnt = [x[0].split() for c in watchers if (x := latest(c, "COUNT"))]
    def total(rows: list[list[str]], i: int) -> int:
        return sum(int(r[i]) for r in rows)

    return (f"registered {total(reg, 0)} (registrations {total(reg, 1)}),"
            f" watcher min {min((int(w[0]) for w in cnt), default=-1)},"
            f" removal events {total(cnt, 1)}, re-lists {total(cnt, 2)}")


async def seen_at(c: Child, tag: str, timeout: float) -> float:
    """When the last watcher of `c` saw the probe `tag` (lines of older probes are skipped)."""
    end = time.monotonic() + timeout
    while True:
        got, at = await c.expect("SEEN", end - time.monotonic())
        if got == tag:
            return float(at)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process `pid` from /proc/<pid>/status, MiB: VmRSS (resident now) or
    VmHWM (the peak resident)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


def run_backends(
    ns: argparse.Namespace, prefix: str,
    bench: Callable[[str, Path, argparse.Namespace], dict[str, float]],
) -> dict[str, dict[str, float]] | None:
    """`bench(backend, root, ns)` for each backend `ns.backend` names, in a temporary
    directory (or `ns.keep`, created and kept). None when interrupted: Ctrl-C and SIGTERM both
    unwind (children stopped, clusters killed, temp files removed), even when started in the
    background with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    backends = ["raftreg", "etcd"] if ns.backend == "both" else [ns.backend]
    results: dict[str, dict[str, float]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if ns.keep:
                ns.keep.mkdir(parents=True)  # a new directory: logs of a failed run stay
                tmp = str(ns.keep)
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
            for b in backends:
                results[b] = bench(b, Path(tmp), ns)
    except KeyboardInterrupt:
        print("interrupted: every cluster and child process stopped", file=sys.stderr)
        return None
    return results


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class ResolverWatch:
    """The Resolver in this process, and the instance ids that left it."""

    def __init__(self, client: RegistryClient) -> None:
        self.resolver = Resolver(client, SERVICE)
        self.ids: set[str] = set()
        self.removals: list[tuple[str, float]] = []
        self.resolver.subscribe(self._changed)

    def _changed(self, instances: tuple[Instance, ...]) -> None:
        ids = {i.id for i in instances if not i.id.startswith("probe-")}
        now = time.monotonic()
        self.removals += [(f"{PREFIX}{k}", now) for k in self.ids - ids]
        self.ids = ids


async def gather_checked(*aws: Any) -> list[Any]:
    """asyncio.gather that cancels the rest when one fails (so no task outlives an error)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def run_backend(backend: str, url: str, pids: list[int], ns: argparse.Namespace,
                      logdir: Path, out: dict[str, float]) -> dict[str, float]:
    """Fills `out` as the figures come (a failure leaves the ones measured so far)."""
    n, p, m = ns.instances, ns.procs, ns.watchers
    children: list[Child] = []
    client = connect(url, timeout=10.0)
    rw = ResolverWatch(client)
    try:
        # watchers first: every one has listed (empty) before the go
        wprocs = math.ceil(m / ns.watchers_per_proc) if m else 0
        shares = [m // wprocs + (i < m % wprocs) for i in range(wprocs)]
        watchers = [await Child.start(f"watcher {i}", logdir / f"{backend}-watcher{i}.log",
                                      "watcher", os.getpid(), url, share, ns.watch_conns, n,
                                      ns.progress)
                    for i, share in enumerate(shares)]
        children += watchers
        base = [n // p + (i < n % p) for i in range(p)]
        firsts = [sum(base[:i]) for i in range(p)]
        regs = [await Child.start(f"registrar {i}", logdir / f"{backend}-registrar{i}.log",
                                  "registrar", os.getpid(), url, firsts[i], base[i], ns.ttl,
                                  ns.reg_inflight)
                for i in range(p)]
        children += regs
        await rw.resolver.start(timeout=30)
        await gather_checked(*(c.expect("READY", 60 + m / 5) for c in children))
        print(f"  {backend}: {wprocs} watcher processes ({m} watchers), {p} registrars ready;"
              f" load {loadavg()}", flush=True)
        t0 = time.monotonic()
        for c in regs:
            c.send("GO")
        deadline = t0 + ns.converge_timeout

        async def registered() -> float:
            ts = [float((await c.expect("DONE", deadline - time.monotonic()))[0]) for c in regs]
            return max(ts) - t0

        async def resolved() -> float:
            await rw.resolver.wait_for(lambda _: len(rw.ids) >= n, deadline - time.monotonic())
            return time.monotonic() - t0

        async def watched() -> float:
            ts = [float((await c.expect("FULL", deadline - time.monotonic()))[0])
                  for c in watchers]
            return max(ts, default=t0) - t0

        figures = {"registered s (t0 -> all N registrations done)": registered(),
                   "visible to a resolver s (t0 -> all N)": resolved(),
                   f"visible to all {m} watchers s (t0 -> all N)": watched()}
        fill = asyncio.gather(*figures.values(), return_exceptions=True)
        while True:
            done, _ = await asyncio.wait({fill}, timeout=10)
            if done:
                break
            print(f"  {backend}: t0+{time.monotonic() - t0:.0f}s: {progress(regs, watchers)},"
                  f" resolver {len(rw.ids)}; load {loadavg()}", flush=True)
        results = fill.result()
        for k, r in zip(figures, results, strict=True):
            if isinstance(r, TimeoutError):
                out[k] = math.nan
                print(f"  {backend}: {k}: not within {ns.converge_timeout} s", flush=True)
            elif isinstance(r, BaseException):
                raise r
            else:
                out[k] = r
        t_fill = time.monotonic()
        print(f"  {backend}: filled in {t_fill - t0:.1f} s; holding {ns.hold} s;"
              f" load {loadavg()}", flush=True)
        # hold
        client_pids = [c.proc.pid for c in children]
        cpu0 = sum(map(cpu_seconds, pids))
        ccpu0 = sum(map(cpu_seconds, client_pids))
        h0 = time.monotonic()
        await asyncio.sleep(ns.hold)
        held = time.monotonic() - h0
        out["server CPU cores (3 nodes, during hold)"] = (sum(map(cpu_seconds, pids)) - cpu0) / held
        out["client CPU cores (registrars+watchers)"] = (
            sum(map(cpu_seconds, client_pids)) - ccpu0) / held
        rss = [rss_mib(pid) for pid in pids]
        out["RSS per node MiB (max)"] = max(rss)
        out["RSS per node MiB (mean)"] = statistics.mean(rss)
        # config changes -> all M watchers
        lat: list[float] = []
        for r in range(ns.changes):
            tag = f"probe-{r}"
            key = f"{PREFIX}{tag}"
            t_put = time.monotonic()
            put = False
            for attempt in range(5):  # the same put again is harmless
                try:
                    await client.put(key, encode_instance(Instance(SERVICE, tag, "127.0.0.1:1")))
                    put = True
                    break
                except RegistryError as e:
                    print(f"  {backend}: change {r}, put attempt {attempt + 1}: {e}", flush=True)
            try:
                if not put:
                    raise TimeoutError
                seen = await gather_checked(*(seen_at(c, tag, 30) for c in watchers))
                lat.append(max(seen, default=t_put) - t_put)
            except TimeoutError:
                print(f"  {backend}: change {r} not seen by every watcher", flush=True)
                lat.append(math.inf)
            with contextlib.suppress(RegistryError):
                await client.delete(key)
            await asyncio.sleep(0.5)
        out[f"change -> all {m} watchers ms (median)"] = statistics.median(lat) * 1e3
        out[f"change -> all {m} watchers ms (max)"] = max(lat) * 1e3
        # what the watchers and registrars saw
        for c in children:
            c.send("STATS")
        wstats = [json.loads((await c.expect("STATS", 60))[0]) for c in watchers]
        rstats = [json.loads((await c.expect("STATS", 60))[0]) for c in regs]
        removals = [tuple(x) for s in wstats for x in s["removals"]] + rw.removals
        fill = {k for k, t in removals if t < t_fill}
        hold = {k for k, t in removals if t >= t_fill}
        out["wrong removals, fill (distinct keys)"] = len(fill)
        out["wrong removals, hold (distinct keys)"] = len(hold)
        out["wrong removal events (sum over watchers)"] = sum(s["removal_events"] for s in wstats)
        out["re-lists (sum over watchers)"] = sum(s["relists"] for s in wstats)
        out["re-registrations (leases lost)"] = sum(
            s["registrations"] - s["n"] for s in rstats)
        out["instances registered at the end"] = sum(s["registered_now"] for s in rstats)
        out["instances held by the resolver at the end"] = len(rw.ids)
        out["instances per watcher at the end (min)"] = min(
            (s["min_count"] for s in wstats), default=-1)
        if fill or hold:
            print(f"  {backend}: removed keys, e.g. {sorted(fill | hold)[:5]}", flush=True)
        return out
    finally:
        for c in children:
            await c.stop()
        await rw.resolver.stop()
        await client.close()


def bench(backend: str, root: Path, ns: argparse.Namespace) -> dict[str, float]:
    """The figures of one backend; after an error, those measured before it."""
    print(f"{backend}: load average {loadavg()}", flush=True)
    out: dict[str, float] = {}
    try:
        return bench_in(backend, root, ns, out)
    except Exception as e:
        print(f"  {backend}: FAILED: {type(e).__name__}: {e}", flush=True)
        return out


def bench_in(backend: str, root: Path, ns: argparse.Namespace,
             out: dict[str, float]) -> dict[str, float]:
    if backend == "raftreg":
        with ProcessCluster(root / "raftreg") as c:
            c.start()
            c.wait_leader()
            url = "raftreg://" + ",".join(c.endpoints)
            return asyncio.run(run_backend(backend, url, node_pids(c, c.names), ns, root, out))
    with EtcdCluster(root / "etcd") as e:
        e.start()
        e.wait_leader()
        return asyncio.run(run_backend(backend, e.url, node_pids(e, e.names), ns, root, out))


def node_pids(group: ProcessGroup, names: list[str]) -> list[int]:
    """The server processes' pids (the launcher execs the server: same pid)."""
    return [group.procs[name].pid for name in names]


def show(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return "-" if math.isnan(v) else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def print_table(results: dict[str, dict[str, float]]) -> bool:
    """The figures of each backend side by side (in the order of `results`: raftreg, etcd),
    with the ratio raftreg / etcd when both ran; False when there is no figure at all."""
    backends = list(results)
    keys = list(dict.fromkeys(k for b in backends for k in results[b]))
    if not keys:
        return False
    width = max(len(k) for k in keys) + 2
    print()
    print(f"{'figure':<{width}}" + "".join(f"{b:>10}" for b in backends)
          + (f"{'ratio':>8}" if len(backends) == 2 else ""))
    print("-" * (width + 10 * len(backends) + 8))
    for k in keys:
        row = f"{k:<{width}}" + "".join(
            f"{show(results[b].get(k, math.nan)):>10}" for b in backends)
        if len(backends) == 2:
            r, e = results["raftreg"].get(k, math.nan), results["etcd"].get(k, math.nan)
            row += f"{show(r / e) if e and not math.isnan(r + e) else '-':>8}"
        print(row)
    print()
    return True


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=1000, help="N instances (default 1000)")
    ap.add_argument("--procs", type=int, default=2, help="P registrar processes")
    ap.add_argument("--watchers", type=int, default=100, help="M watchers")
    ap.add_argument("--hold", type=float, default=15.0, help="seconds to hold after filling")
    ap.add_argument("--backend", choices=("raftreg", "etcd", "both"), default="both")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--ttl", type=int, default=10, help="lease TTL of every instance (s)")
    ap.add_argument("--watchers-per-proc", type=int, default=100)
    ap.add_argument("--watch-conns", type=int, default=4, help="clients per watcher process")
    ap.add_argument("--reg-inflight", type=int, default=128,
                    help="first registrations in flight per registrar process")
    ap.add_argument("--progress", type=float, default=1.0,
                    help="watchers' progress interval (s; the Resolver's default; 0: off)")
    ap.add_argument("--changes", type=int, default=5, help="config changes measured")
    ap.add_argument("--converge-timeout", type=float, default=180.0,
                    help="give up waiting for all N to be visible after this (s)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="data and logs (servers, children) in this new directory, kept")
    ns = ap.parse_args()
    started = time.monotonic()
    load_before = loadavg()
    print(f"load average before: {load_before}  (cores: {os.cpu_count()}); N={ns.instances}"
          f" P={ns.procs} M={ns.watchers} hold={ns.hold:g}s TTL={ns.ttl}s", flush=True)
    results = run_backends(ns, "bench-scale-", bench)
    if results is None:
        return 130
    load_after = loadavg()
    if not print_table(results):
        return 1
    print("ratio = raftreg / etcd; '-' = not reached within --converge-timeout (or 0/0).")
    print(f"load average after: {load_after}; took {time.monotonic() - started:.0f}s;"
          f" python {sys.version.split()[0]}")
    if ns.json:
        ns.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(ns).items()}, **results,
            "load_before": load_before, "load_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
