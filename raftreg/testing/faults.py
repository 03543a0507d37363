"""Fault schedules against a real three-process cluster, and the checks after each one.

A `Schedule` is a seed plus a list of `Step`s. Each step puts the cluster into a fault state
and holds it for `hold` seconds while the recorded workload (`raftreg.testing.history`) runs:

=============  ==================================================================================
kind           effect (targets: "leader", "follower" or a node name, resolved when applied)
=============  ==================================================================================
partition      full partition between `a` and `b` (raft traffic both ways)
one_way        raft messages from `a` to `b` dropped, the other direction works
isolate        `a` cut off from both other nodes
drop           every raft message dropped with probability `value`
delay          every raft message delayed by `value` ms (FIFO per link)
kill           kill -9 `a`; it stays down until a heal
kill_all       kill -9 every node, hold, start them all again
pause          SIGSTOP `a`; SIGCONT at the next heal
restart        kill -9 `a` and start it at once
heal           everything back: network healed, paused nodes resumed, dead nodes started
none           no new fault (faults in force stay)
=============  ==================================================================================

Faults accumulate until a heal. After the last step the runner heals, lets the workload run a
moment on the healthy cluster, stops it, and checks (`run_schedule`):

- every node converges (same revision, same hash) and reports the same committed history
  (a catch-up watch from revision 1, ended by a sentinel write);
- the committed history is consistent on its own and replays to every node's final state;
- every acknowledged write is in the committed history at the revision it was acknowledged
  with; a write reported failed is not in it; no write is applied twice (values are unique);
- the register history is linearizable (`lincheck.KVModel`, per key);
- every watch stream is ordered, gapless, duplicate-free, whole per revision, resumed
  correctly, complete, with correct prev_kv (`watchcheck`);
- no lease expired before its TTL (checked live by the lease clients).

`random_schedule(rng)` draws schedules without hypothesis (the soak script); the fault tests
draw them with the hypothesis strategy in tests/fault/. Schedules round-trip through JSON
(`Schedule.to_json` / `from_json`) so a failing one can be saved and replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from raftreg import errors as E
from raftreg.api.convert import event_from_pb, range_result_from_pb
from raftreg.client import GrpcRegistryClient
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.store.commands import Event, EventType
from raftreg.testing import lincheck as L
from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.history import (
    CHANNEL_OPTIONS,
    PREFIX,
    History,
    Workload,
    WorkloadConfig,
)
from raftreg.testing.watchcheck import check_committed, check_watch, final_state

KINDS: dict[str, int] = {  # kind -> weight when drawing
    "partition": 3,
    "one_way": 2,
    "isolate": 3,
    "drop": 2,
    "delay": 1,
    "kill": 2,
    "kill_all": 1,
    "pause": 2,
    "restart": 2,
    "heal": 2,
    "none": 1,
}
TARGETS = ("leader", "follower", "n1", "n2", "n3")
DROP_RATES = (0.05, 0.2, 0.5)
DELAYS_MS = (5.0, 30.0, 120.0)
HOLDS = (0.5, 1.0, 1.5, 2.5)
SENTINEL = "/zz/fault-sentinel"


@dataclass(frozen=True)
class Step:
    kind: str
    a: str = ""
    b: str = ""
    value: float = 0.0
    hold: float = 1.0

    def __str__(self) -> str:
        args = [x for x in (self.a, self.b) if x]
        if self.kind in ("drop", "delay"):
            args.append(f"{self.value:g}")
        return f"{self.kind}({', '.join(args)}) for {self.hold:g}s"


@dataclass(frozen=True)
class Schedule:
    seed: int
    steps: tuple[Step, ...]
    broken: str = ""  # TEST ONLY: a node made deliberately broken (reads without barrier)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": [asdict(s) for s in self.steps],
            "broken": self.broken,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schedule:
        return cls(
            int(d["seed"]),
            tuple(Step(**s) for s in d["steps"]),
            d.get("broken", ""),
            d.get("note", ""),
        )

    def __str__(self) -> str:
        return f"seed={self.seed} [" + "; ".join(str(s) for s in self.steps) + "]"


def make_step(kind: str, a: str, b: str, value_index: int, hold: float) -> Step:
    """A well-formed step from raw draws (shared by `random_schedule` and hypothesis)."""
    if kind in ("partition", "one_way"):
        if a == b or (a in ("leader", "follower") and b in ("leader", "follower")):
            b = "n1" if a != "n1" else "n2"
        return Step(kind, a, b, hold=hold)
    if kind in ("isolate", "kill", "pause", "restart"):
        return Step(kind, a, hold=hold)
    if kind == "drop":
        return Step(kind, value=DROP_RATES[value_index % len(DROP_RATES)], hold=hold)
    if kind == "delay":
        return Step(kind, value=DELAYS_MS[value_index % len(DELAYS_MS)], hold=hold)
    return Step(kind, hold=hold)


def random_schedule(rng: random.Random, seed: int, max_steps: int = 5) -> Schedule:
    kinds, weights = zip(*KINDS.items(), strict=True)
    steps = tuple(
        make_step(
            rng.choices(kinds, weights)[0],
            rng.choice(TARGETS),
            rng.choice(TARGETS),
            rng.randrange(3),
            rng.choice(HOLDS),
        )
        for _ in range(rng.randint(1, max_steps))
    )
    return Schedule(seed, steps)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class ScheduleResult:
    schedule: Schedule
    violations: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # steps as resolved (targets named)
    counts: dict[str, int] = field(default_factory=dict)
    lincheck: str = ""
    elapsed: float = 0.0
    root: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        head = "OK" if self.ok else f"{len(self.violations)} VIOLATION(S)"
        lines = [f"{head}: {self.schedule} ({self.elapsed:.1f}s)", "applied: " + "; ".join(
            self.applied), f"ops: {self.counts}", f"lincheck: {self.lincheck.splitlines()[0]}"
            if self.lincheck else "lincheck: -"]
        lines += [f"  - {v}" for v in self.violations[:30]]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_json(),
            "violations": self.violations,
            "applied": self.applied,
            "counts": self.counts,
            "lincheck": self.lincheck,
            "elapsed": round(self.elapsed, 2),
            "root": self.root,
        }


def save_failure(result: ScheduleResult, directory: Path) -> Path:
    """Write a failing schedule (seed, steps, what went wrong) for replay; returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"seed-{result.schedule.seed}.json"
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return path


def load_schedule(path: Path) -> Schedule:
    d = json.loads(path.read_text())
    return Schedule.from_json(d.get("schedule", d))


# ---------------------------------------------------------------------------------------------
# Running one schedule


class _Driver:
    def __init__(self, cluster: ProcessCluster, rng: random.Random) -> None:
        self.c = cluster
        self.rng = rng

    def _up(self) -> list[str]:
        return [n for n in self.c.names if self.c.alive(n) and n not in self.c.paused]

    def resolve(self, target: str, avoid: str = "") -> str:
        if target in self.c.names:
            return target
        leader = self.c.leader()
        if leader is None:
            up = self._up() or list(self.c.names)
            leader = self.rng.choice(up)
        if target == "leader":
            return leader
        others = [n for n in self.c.names if n not in (leader, avoid)]
        return self.rng.choice(others)

    def apply(self, step: Step) -> str:
        c = self.c
        k = step.kind
        if k in ("partition", "one_way"):
            a = self.resolve(step.a)
            b = self.resolve(step.b, avoid=a)
            if a == b:
                b = next(n for n in c.names if n != a)
            c.partition(a, b, one_way=k == "one_way")
            return f"{k}({a}{' -> ' if k == 'one_way' else ' | '}{b})"
        if k == "isolate":
            a = self.resolve(step.a)
            c.isolate(a)
            return f"isolate({a})"
        if k == "drop":
            c.drop_rate(step.value)
            return f"drop({step.value:g})"
        if k == "delay":
            c.delay(step.value)
            return f"delay({step.value:g}ms)"
        if k == "kill":
            a = self.resolve(step.a)
            c.kill(a)
            return f"kill({a})"
        if k == "kill_all":
            for n in c.names:
                c.kill(n)
            return "kill_all"
        if k == "pause":
            a = self.resolve(step.a)
            if c.alive(a) and a not in c.paused:
                c.pause(a)
            return f"pause({a})"
        if k == "restart":
            a = self.resolve(step.a)
            c.restart(a)
            return f"restart({a})"
        if k == "heal":
            c.heal()
            return "heal"
        return "none"

    def after_hold(self, step: Step) -> None:
        if step.kind == "kill_all":
            self.c.start()


async def _committed_history(endpoint: str, until_rev: int, timeout: float = 20.0) -> list[Event]:
    """Every committed event (all keys) from revision 1 through `until_rev`, from one node."""
    events: list[Event] = []
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        req = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=b"\0", range_end=b"\0", start_revision=1, prev_kv=True
            )
        )

        async def reqs() -> Any:
            yield req
            await asyncio.sleep(timeout + 5)

        call: Any = pbg.WatchStub(ch).Watch(reqs(), wait_for_ready=True)
        deadline = time.monotonic() + timeout
        try:
            while not events or events[-1].kv.mod_revision < until_rev:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"catch-up on {endpoint} stopped at "
                                       f"{events[-1].kv.mod_revision if events else 0}")
                resp = await asyncio.wait_for(call.read(), left)
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise TimeoutError(f"catch-up stream on {endpoint} ended")
                if resp.canceled:
                    raise TimeoutError(f"catch-up on {endpoint} canceled: {resp.cancel_reason}")
                events.extend(event_from_pb(e) for e in resp.events)
        finally:
            call.cancel()
    return events


async def _final_state(endpoint: str, revision: int) -> dict[bytes, Any]:
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
        resp = await pbg.KVStub(ch).Range(
            pb.RangeRequest(key=PREFIX.encode(), range_end=end.encode(), revision=revision,
                            serializable=True),
            timeout=5,
            wait_for_ready=True,
        )
        return {kv.key: kv for kv in range_result_from_pb(resp).kvs}


def _check_writes(h: History, committed: Sequence[Event]) -> list[str]:
    """Acknowledged writes present at their revision; failed ones absent; none applied twice."""
    out: list[str] = []
    puts: dict[bytes, list[Event]] = {}  # value -> put events carrying it
    at: dict[tuple[int, bytes], Event] = {}
    for ev in committed:
        at[(ev.kv.mod_revision, ev.kv.key)] = ev
        if ev.type == EventType.PUT:
            puts.setdefault(ev.kv.value, []).append(ev)
    for value, evs in puts.items():
        if len(evs) > 1 and not value.startswith(b"/zz"):
            out.append(f"value {value!r} written {len(evs)} times (a write applied twice): "
                       f"revisions {[x.kv.mod_revision for x in evs]}")
    e: Event | None
    for op in h.ops:
        if op.kind not in ("put", "cas", "delete", "lease_put"):
            continue
        key = op.key.encode()
        val = (op.value or "").encode()
        if op.outcome == "ok":
            if op.kind in ("put", "lease_put") or (op.kind == "cas" and op.output is True):
                e = at.get((op.revision, key))
                if e is None or e.type != EventType.PUT or e.kv.value != val:
                    out.append(f"acknowledged {op.kind} {op.key}={op.value} (client {op.client}, "
                               f"revision {op.revision}) is not in the committed history there")
            elif op.kind == "delete" and op.output:
                e = at.get((op.revision, key))
                if e is None or e.type != EventType.DELETE:
                    out.append(f"acknowledged delete of {op.key} (revision {op.revision}) is not "
                               f"in the committed history")
        elif op.outcome == "fail" and op.kind in ("put", "lease_put", "cas") and val in puts:
            out.append(f"{op.kind} {op.key}={op.value} reported failed ({op.error}) but applied "
                       f"at revision {puts[val][0].kv.mod_revision}")
        if len(out) > 20:
            break
    return out


async def _wait_watches(wl: Workload, committed: Sequence[Event], timeout: float) -> None:
    want = max((e.kv.mod_revision for e in committed if e.kv.key.startswith(PREFIX.encode())),
               default=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.last_revision >= want or w.end_error for w in wl.watches):
            return
        await asyncio.sleep(0.1)


async def _run(schedule: Schedule, root: Path, wcfg: WorkloadConfig,
               settle_s: float) -> ScheduleResult:
    res = ScheduleResult(schedule, root=str(root))
    rng = random.Random(schedule.seed)
    t0 = time.monotonic()
    cluster = ProcessCluster(
        root, faults=True, auto_compact_retain=0, watch_progress_interval_s=1.0,
        propose_timeout_s=3.0,
    )
    to_thread = asyncio.to_thread
    h = History()
    wl = Workload(cluster.endpoints, h, random.Random(rng.getrandbits(64)), wcfg)
    driver = _Driver(cluster, random.Random(rng.getrandbits(64)))
    stop_ops, stop_watches = asyncio.Event(), asyncio.Event()
    ops: list[asyncio.Future[None]] = []
    watches: list[asyncio.Future[None]] = []
    try:
        await to_thread(cluster.start)
        await to_thread(cluster.wait_leader, 30.0)
        if schedule.broken:
            cluster.unsafe_local_reads(schedule.broken)
            res.applied.append(f"BROKEN({schedule.broken})")
        ops, watches = wl.start(stop_ops, stop_watches)
        await asyncio.sleep(0.5)
        for step in schedule.steps:
            res.applied.append(await to_thread(driver.apply, step))
            await asyncio.sleep(step.hold)
            await to_thread(driver.after_hold, step)
        await to_thread(cluster.heal)
        try:
            await to_thread(cluster.wait_leader, 30.0)
        except TimeoutError as e:
            res.violations.append(f"no leader after healing: {e}")
        await asyncio.sleep(settle_s)
        for n in cluster.names:
            if not cluster.alive(n):
                code = cluster.procs[n].returncode if n in cluster.procs else None
                tail = cluster.log_text(n)[-1500:]
                res.violations.append(f"{n} exited by itself (code {code}); log tail:\n{tail}")
        stop_ops.set()
        await asyncio.gather(*ops, return_exceptions=True)
        res.counts = h.counts()
        try:
            await to_thread(cluster.wait_converged, 30.0)
            async with GrpcRegistryClient(cluster.endpoints, timeout=3.0,
                                          retry_budget=20.0) as c:
                end_rev = (await c.put(SENTINEL, f"/zz{schedule.seed}")).revision
            st = await to_thread(cluster.wait_converged, 30.0)
        except (TimeoutError, E.RegistryError) as e:
            res.violations.append(f"no convergence after healing: {e}")
            return res
        if st.header.revision < end_rev:
            res.violations.append(f"converged at {st.header.revision} < sentinel {end_rev}")
        try:
            histories = [
                await _committed_history(cluster.client[n], end_rev) for n in cluster.names
            ]
        except (TimeoutError, grpc.aio.AioRpcError) as e:
            codes = {n: p.poll() for n, p in cluster.procs.items()}
            res.violations.append(f"could not read the committed history (exit codes {codes}, "
                                  f"{time.monotonic() - t0:.1f}s): {e}")
            return res
        committed = [e for e in histories[0] if e.kv.mod_revision <= end_rev]
        for n, other in zip(cluster.names[1:], histories[1:], strict=True):
            mine = [e for e in other if e.kv.mod_revision <= end_rev]
            if mine != committed:
                diff = next((i for i, (x, y) in enumerate(zip(committed, mine, strict=False))
                             if x != y), min(len(committed), len(mine)))
                res.violations.append(f"{n}'s committed history differs from n1's at event {diff}")
        res.violations += check_committed(committed)
        replayed = {k: v for k, v in final_state(committed).items()
                    if k.startswith(PREFIX.encode())}
        for n in cluster.names:
            if await _final_state(cluster.client[n], end_rev) != replayed:
                res.violations.append(f"{n}'s state at {end_rev} is not the replayed history")
        res.violations += _check_writes(h, committed)
        await _wait_watches(wl, committed, 15.0)
        stop_watches.set()
        await asyncio.gather(*watches, return_exceptions=True)
        fcommitted = [e for e in committed if e.kv.key.startswith(PREFIX.encode())]
        for w in wl.watches:
            res.violations += check_watch(w, fcommitted, complete=True)
        res.violations += h.violations
        res.violations += [f"client raised outside the error tree: {u}" for u in h.unexpected]
        lin = await to_thread(L.check, L.KVModel(), h.lincheck_ops(), 120.0)
        res.lincheck = lin.explain()
        if lin.ok is False:
            res.violations.append("register history is not linearizable:\n" + lin.explain())
        elif lin.ok is None:
            res.lincheck = "undecided (timeout) " + res.lincheck
    finally:
        stop_ops.set()
        stop_watches.set()
        for t in ops + watches:
            t.cancel()
        await asyncio.gather(*ops, *watches, return_exceptions=True)
        await wl.close()
        await to_thread(cluster.close)
        res.elapsed = time.monotonic() - t0
    return res


def run_schedule(
    schedule: Schedule,
    root: Path,
    *,
    workload: WorkloadConfig | None = None,
    settle_s: float = 1.0,
    keep: bool = False,
) -> ScheduleResult:
    """Run one schedule on a fresh cluster under `root` and check it. A cluster left in `root`
    by an earlier run is removed first; this one (logs, data) is removed afterwards unless the
    schedule failed or `keep` is set."""
    if (root / "cluster.toml").exists():  # a previous run's cluster: start from scratch
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(_run(schedule, root, workload or WorkloadConfig(), settle_s))
    if res.ok and not keep:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    return res
