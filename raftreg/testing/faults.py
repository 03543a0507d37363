"""Fault schedules against a real three-process cluster, and the checks after each one.

The cluster is raftreg's (`ProcessCluster`, the default) or a real etcd 3.5
(`raftreg.testing.etcd.EtcdCluster`, `Schedule(..., backend="etcd")`): the same workload and the
same checkers run against both, so a checker that flags etcd is suspect first (or etcd has a
bug: see docs/fault-tests.md for the one etcd 3.5.1 bug they catch). etcd gets the faults
that apply to a cluster whose transport we do not control (`ETCD_KINDS`: kill, kill_all,
pause, restart, heal, none; no message-level partitions, drops or delays), its workload goes
through `EtcdRegistryClient` only (watches included), and the after-heal reads use what etcd
offers: catch-up watches from revision 1 through the client, Status revisions per member, and a
full serializable range per member at the same revision instead of a hash.

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
power_cut      kill -9 `a`, drop every write it had not synced, start it at once (value 1: torn,
               i.e. unsynced tails may survive in part; see raftreg.testing.powercut)
power_cut_all  kill -9 every node, drop every unsynced write on every node, hold, start them all
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
  correctly, complete, with correct prev_kv (`watchcheck`); a watch that has not caught up
  `WATCH_CATCH_UP_S` after the history was read is reported as "watch lagging" (a liveness
  failure, not a gap);
- no lease expired before its TTL (checked live by the lease clients);
- no two nodes said they were leader in the same term (each node's Status, polled all along).

Power cuts run each node on the power-cut file system (only for schedules that have them, or a
node with syncing switched off: `Schedule.no_sync`, TEST ONLY, a node that must be caught
losing acknowledged writes).

A linearizability check that does not finish within `LINCHECK_TIMEOUT_S` is a violation
("linearizability undecided"): a schedule never passes on a history nobody checked.

`random_schedule(rng, seed, backend=...)` draws schedules without hypothesis (the soak
script); the fault tests draw them with the hypothesis strategy in tests/fault/. Schedules
round-trip through JSON (`Schedule.to_json` / `from_json`) so a failing one can be saved and
replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from raftreg import errors as E
from raftreg.client import GrpcRegistryClient
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.convert import event_from_pb, range_result_from_pb
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import lincheck as L
from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.history import (
    BACKENDS,
    CHANNEL_OPTIONS,
    PREFIX,
    History,
    Workload,
    WorkloadConfig,
)
from raftreg.testing.powercut import unmount_stale
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
    "power_cut": 2,
    "power_cut_all": 1,
    "heal": 2,
    "none": 1,
}
TARGETS = ("leader", "follower", "n1", "n2", "n3")
# etcd: only what we can do to processes whose transport we do not control.
ETCD_KINDS: dict[str, int] = {
    "kill": 3,
    "kill_all": 1,
    "pause": 2,
    "restart": 2,
    "heal": 2,
    "none": 1,
}
ETCD_TARGETS = ("leader", "follower", "e1", "e2", "e3")
NETWORK_KINDS = frozenset({"partition", "one_way", "isolate", "drop", "delay"})
POWER_KINDS = frozenset({"power_cut", "power_cut_all"})  # raftreg only: needs FUSE
# Every fsync on the power-cut disks takes this much longer than the real one (~2 ms here), so
# that a cut often comes while a sync is under way: there is then an unsynced tail to drop or
# tear, as there would be under a heavier load.
POWER_CUT_SYNC_DELAY_MS = 5.0
STATUS_POLL_S = 0.1
DROP_RATES = (0.05, 0.2, 0.5)
DELAYS_MS = (5.0, 30.0, 120.0)
HOLDS = (0.5, 1.0, 1.5, 2.5)
SENTINEL = "/zz/fault-sentinel"
# After healing, how long the watches get to deliver the last committed revision before the
# ones still behind are reported as lagging (a liveness failure, reported as such).
WATCH_CATCH_UP_S = 60.0
# The linearizability check's limit. A schedule's history takes well under a second to check;
# an undecided check is reported as a violation, never passed silently.
LINCHECK_TIMEOUT_S = 120.0


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
        if self.kind in POWER_KINDS and self.value:
            args.append("torn")
        return f"{self.kind}({', '.join(args)}) for {self.hold:g}s"


@dataclass(frozen=True)
class Schedule:
    seed: int
    steps: tuple[Step, ...]
    broken: str = ""  # TEST ONLY: a node made deliberately broken (reads without barrier)
    note: str = ""
    backend: str = "raftreg"  # or "etcd": a real etcd cluster (ETCD_KINDS only)
    no_sync: str = ""  # TEST ONLY: nodes whose journal never syncs ("n1,n2" or "all")
    disk_metadata: str = "strict"  # power-cut disks: "strict" (POSIX) or "ordered" (ext4)

    def to_json(self) -> dict[str, Any]:
        d = {
            "seed": self.seed,
            "steps": [asdict(s) for s in self.steps],
            "broken": self.broken,
            "note": self.note,
            "backend": self.backend,
        }
        if self.no_sync:
            d["no_sync"] = self.no_sync
        if self.disk_metadata != "strict":
            d["disk_metadata"] = self.disk_metadata
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schedule:
        return cls(
            int(d["seed"]),
            tuple(Step(**s) for s in d["steps"]),
            d.get("broken", ""),
            d.get("note", ""),
            d.get("backend", "raftreg"),
            d.get("no_sync", ""),
            d.get("disk_metadata", "strict"),
        )

    @property
    def power_cuts(self) -> bool:
        """Runs on the power-cut file system (it cuts the power, or a node does not sync)."""
        return bool(self.no_sync) or any(s.kind in POWER_KINDS for s in self.steps)

    def __str__(self) -> str:
        head = "etcd " if self.backend == "etcd" else ""
        if self.no_sync:
            head += f"no_sync={self.no_sync} "
        if self.disk_metadata != "strict":
            head += f"disk_metadata={self.disk_metadata} "
        return f"{head}seed={self.seed} [" + "; ".join(str(s) for s in self.steps) + "]"


def make_step(kind: str, a: str, b: str, value_index: int, hold: float) -> Step:
    """A well-formed step from raw draws (shared by `random_schedule` and hypothesis)."""
    if kind in ("partition", "one_way"):
        if a == b or (a in ("leader", "follower") and b in ("leader", "follower")):
            b = "n1" if a != "n1" else "n2"
        return Step(kind, a, b, hold=hold)
    if kind in ("isolate", "kill", "pause", "restart"):
        return Step(kind, a, hold=hold)
    if kind == "power_cut":  # one draw in three tears the unsynced tails instead of dropping
        return Step(kind, a, value=float(value_index == 1), hold=hold)
    if kind == "power_cut_all":
        return Step(kind, value=float(value_index == 1), hold=hold)
    if kind == "drop":
        return Step(kind, value=DROP_RATES[value_index % len(DROP_RATES)], hold=hold)
    if kind == "delay":
        return Step(kind, value=DELAYS_MS[value_index % len(DELAYS_MS)], hold=hold)
    return Step(kind, hold=hold)


def random_schedule(
    rng: random.Random, seed: int, max_steps: int = 5, backend: str = "raftreg"
) -> Schedule:
    etcd = backend == "etcd"
    kinds, weights = zip(*(ETCD_KINDS if etcd else KINDS).items(), strict=True)
    targets = ETCD_TARGETS if etcd else TARGETS
    steps = tuple(
        make_step(
            rng.choices(kinds, weights)[0],
            rng.choice(targets),
            rng.choice(targets),
            rng.randrange(3),
            rng.choice(HOLDS),
        )
        for _ in range(rng.randint(1, max_steps))
    )
    return Schedule(seed, steps, backend=backend)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class ScheduleResult:
    schedule: Schedule
    violations: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # steps as resolved (targets named)
    counts: dict[str, int] = field(default_factory=dict)
    leaders: dict[int, list[str]] = field(default_factory=dict)  # term -> nodes that led it
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
            "leaders": {str(t): ns for t, ns in sorted(self.leaders.items())},
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


class FaultCluster(Protocol):
    """What the driver and the runner do to a cluster: `ProcessCluster` (raftreg; also the
    network faults) and `EtcdCluster` (real etcd; process faults only) both have it."""

    names: list[str]
    paused: set[str]
    procs: dict[str, subprocess.Popen[bytes]]

    def alive(self, name: str) -> bool: ...
    def leader(self) -> str | None: ...
    def wait_leader(self, timeout: float = ...) -> str: ...
    def start(self, *names: str) -> None: ...
    def kill(self, name: str) -> None: ...
    def pause(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def heal(self) -> None: ...
    def log_text(self, name: str) -> str: ...
    def close(self) -> None: ...


class _Driver:
    def __init__(self, cluster: FaultCluster, rng: random.Random) -> None:
        self.c = cluster
        self.rng = rng
        self.downed: set[str] = set()  # nodes this driver stopped and has not started since

    def exits(self) -> list[str]:
        """Nodes that exited by themselves since the last look (e.g. crashed while restarting
        on a torn journal): checked before every step, so that a heal that restarts them
        cannot hide it."""
        out = []
        for n in self.c.names:
            p = self.c.procs.get(n)
            if n not in self.downed and p is not None and p.poll() is not None:
                tail = self.c.log_text(n)[-1500:]
                out.append(f"{n} exited by itself (code {p.returncode}) during the schedule; "
                           f"log tail:\n{tail}")
                self.downed.add(n)  # once
        return out

    def _net(self, kind: str) -> ProcessCluster:
        if not isinstance(self.c, ProcessCluster):
            raise ValueError(f"{kind}: message-level faults need raftreg's fault transport; "
                             f"they do not apply to {type(self.c).__name__}")
        return self.c

    def _power(self, step: Step, *names: str) -> str:
        c = self.c
        if not isinstance(c, ProcessCluster | EtcdCluster) or c.disks is None:
            raise ValueError(f"{step.kind}: needs a raftreg cluster on the power-cut file system")
        reports = c.power_cut(*names, torn=bool(step.value), seed=self.rng.getrandbits(32))
        lost = []  # "n1/raft.wal 230->200B": its size when the power went -> after the cut
        for n, r in sorted(reports.items()):
            for path, f in sorted(r["files"].items()):
                if f["size"] != f["kept"] or f["blocks_restored"]:
                    torn = f["kept"] - f["durable_size"]
                    lost.append(f"{n}{path} {f['size']}->{f['kept']}B"
                                + (f" ({torn}B of it a torn tail)" if torn else ""))
            lost += [f"{n}{p} gone" for p in r["lost"]]
        what = "torn " if step.value else ""
        return f"{step.kind}({what}{', '.join(names) or 'all'}: {'; '.join(lost) or 'all synced'})"

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
            self._net(k).partition(a, b, one_way=k == "one_way")
            return f"{k}({a}{' -> ' if k == 'one_way' else ' | '}{b})"
        if k == "isolate":
            a = self.resolve(step.a)
            self._net(k).isolate(a)
            return f"isolate({a})"
        if k == "drop":
            self._net(k).drop_rate(step.value)
            return f"drop({step.value:g})"
        if k == "delay":
            self._net(k).delay(step.value)
            return f"delay({step.value:g}ms)"
        if k == "kill":
            a = self.resolve(step.a)
            self.downed.add(a)
            c.kill(a)
            return f"kill({a})"
        if k == "kill_all":
            self.downed.update(c.names)
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
            self.downed.discard(a)
            return f"restart({a})"
        if k == "power_cut":
            a = self.resolve(step.a)
            self.downed.add(a)
            applied = self._power(step, a)
            c.start(a)
            self.downed.discard(a)
            return applied
        if k == "power_cut_all":
            self.downed.update(c.names)
            return self._power(step)
        if k == "heal":
            c.heal()
            self.downed.clear()
            return "heal"
        return "none"

    def after_hold(self, step: Step) -> None:
        if step.kind in ("kill_all", "power_cut_all"):
            self.c.start()
            self.downed.clear()


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
        key = PREFIX.encode()
        resp = await pbg.KVStub(ch).Range(
            pb.RangeRequest(key=key, range_end=prefix_range_end(key), revision=revision,
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


async def _wait_watches(
    wl: Workload, committed: Sequence[Event], timeout: float
) -> dict[str, str]:
    """Wait (up to `timeout` seconds) until every live watch has delivered the last committed
    revision on the workload's range. Returns, by watch name, a "watch lagging" violation for
    each one that has not: a liveness failure, reported as such. (`check_watch` judges what
    was delivered: order, gaps, whole revisions; the caller checks a lagging watch without
    the completeness check, so a lag is never reported as a gap.)"""
    want = max((e.kv.mod_revision for e in committed if e.kv.key.startswith(PREFIX.encode())),
               default=0)
    deadline = time.monotonic() + timeout
    while True:
        lagging = [w for w in wl.watches if w.last_revision < want and not w.end_error]
        if not lagging or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    return {w.name: f"watch lagging: {w.name} had delivered up to revision {w.last_revision} "
                    f"of {want} {timeout:g}s after the history was read" for w in lagging}


# ---------------------------------------------------------------------------------------------
# etcd: the committed history and the final states through the client (no raw stubs)


async def _etcd_committed_history(endpoint: str, until_rev: int,
                                  timeout: float = 20.0) -> list[Event]:
    """Every committed event (all keys) from revision 1 through `until_rev`, from one etcd
    member: the client's `Watch` from revision 1 on a client pinned to that member."""
    events: list[Event] = []
    async with EtcdRegistryClient([endpoint], timeout=3.0, retry_budget=10.0) as c:
        w = await c.watch(b"\0", range_end=b"\0", start_revision=1, prev_kv=True)
        it = w.__aiter__()
        deadline = time.monotonic() + timeout
        try:
            while not events or events[-1].kv.mod_revision < until_rev:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"catch-up on {endpoint} stopped at "
                                       f"{events[-1].kv.mod_revision if events else 0}")
                try:
                    b = await asyncio.wait_for(it.__anext__(), left)
                except StopAsyncIteration:
                    raise TimeoutError(f"catch-up watch on {endpoint} ended") from None
                if b.compacted:
                    raise TimeoutError(f"catch-up on {endpoint} compacted at "
                                       f"{b.compact_revision}")
                events.extend(b.events)
        finally:
            w.cancel()
    return events


async def _etcd_all_keys(endpoint: str, revision: int) -> dict[bytes, KeyValue]:
    """Every key of one etcd member at `revision` (serializable: that member's own data)."""
    async with EtcdRegistryClient([endpoint], timeout=5.0, retry_budget=5.0) as c:
        r = await c.get(b"\0", range_end=b"\0", revision=revision, serializable=True)
    return {kv.key: kv for kv in r.kvs}


# ---------------------------------------------------------------------------------------------
# The two kinds of cluster the runner drives


class _LeaderPoller:
    """Polls every node's Status all along: which nodes said they led which term.

    A node's Status reads its term, then its leader, then its term again (the header): a claim
    counts only when both terms agree, so a term change in between cannot fake one."""

    def __init__(self, c: ProcessCluster) -> None:
        self.c = c
        self.claims: dict[int, set[str]] = {}
        self.polls = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        channels = {n: grpc.aio.insecure_channel(self.c.client[n], options=CHANNEL_OPTIONS)
                    for n in self.c.names}
        try:
            while not stop.is_set():
                up = [n for n in self.c.names if self.c.alive(n) and n not in self.c.paused]
                await asyncio.gather(*(self._poll(n, channels[n]) for n in up if n in channels))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_POLL_S)
        finally:
            for ch in channels.values():
                await ch.close(None)

    async def _poll(self, name: str, ch: grpc.aio.Channel) -> None:
        try:
            st = await pbg.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=0.5)
        except grpc.aio.AioRpcError:
            self.failed += 1
            return
        self.polls += 1
        if st.leader and st.leader == st.header.member_id and st.raftTerm == st.header.raft_term:
            self.claims.setdefault(st.raftTerm, set()).add(name)

    def violations(self) -> list[str]:
        return [f"two leaders in term {t}: {', '.join(sorted(ns))} (each said it led)"
                for t, ns in sorted(self.claims.items()) if len(ns) > 1]


class _RaftregTarget:
    """raftreg's ProcessCluster with the fault transport; after-heal reads with raw stubs."""

    def __init__(self, root: Path, schedule: Schedule) -> None:
        self.c = ProcessCluster(
            root, faults=True, power_cuts=schedule.power_cuts,
            sync_delay_ms=POWER_CUT_SYNC_DELAY_MS, disk_metadata=schedule.disk_metadata,
            auto_compact_retain=0,
            watch_progress_interval_s=1.0, propose_timeout_s=3.0,
        )
        self.cluster: FaultCluster = self.c
        self.poller: _LeaderPoller | None = _LeaderPoller(self.c)

    def setup(self, schedule: Schedule, res: ScheduleResult) -> None:
        if schedule.broken:
            self.c.unsafe_local_reads(schedule.broken)
            res.applied.append(f"BROKEN({schedule.broken})")
        if schedule.no_sync:
            names = (self.c.names if schedule.no_sync == "all"
                     else [n.strip() for n in schedule.no_sync.split(",")])
            for n in names:
                self.c.unsafe_no_sync(n)
            res.applied.append(f"NO_SYNC({', '.join(names)})")

    async def sentinel(self, seed: int) -> tuple[int, int]:
        """Converge, write the sentinel, converge again: (sentinel revision, converged one)."""
        await asyncio.to_thread(self.c.wait_converged, 30.0)
        async with GrpcRegistryClient(self.c.endpoints, timeout=3.0, retry_budget=20.0) as c:
            end_rev = (await c.put(SENTINEL, f"/zz{seed}")).revision
        st = await asyncio.to_thread(self.c.wait_converged, 30.0)
        return end_rev, st.header.revision

    async def committed_history(self, name: str, end_rev: int) -> list[Event]:
        return await _committed_history(self.c.client[name], end_rev)

    async def state_violations(self, end_rev: int, committed: Sequence[Event]) -> list[str]:
        out: list[str] = []
        replayed = {k: v for k, v in final_state(committed).items()
                    if k.startswith(PREFIX.encode())}
        for n in self.c.names:
            if await _final_state(self.c.client[n], end_rev) != replayed:
                out.append(f"{n}'s state at {end_rev} is not the replayed history")
        return out


class _EtcdTarget:
    """A real etcd (EtcdCluster); every after-heal read goes through EtcdRegistryClient."""

    def __init__(self, root: Path, schedule: Schedule) -> None:
        if schedule.broken:
            raise ValueError("a deliberately broken node exists only for raftreg")
        bad = [st.kind for st in schedule.steps if st.kind in NETWORK_KINDS]
        if bad or schedule.no_sync:
            raise ValueError(f"etcd schedules have no message-level faults (nor no_sync): {bad}")
        # power cuts: explicit schedules only (ETCD_KINDS does not draw them)
        self.c = EtcdCluster(root, power_cuts=schedule.power_cuts,
                             sync_delay_ms=POWER_CUT_SYNC_DELAY_MS,
                             disk_metadata=schedule.disk_metadata)
        self.cluster: FaultCluster = self.c
        self.poller: _LeaderPoller | None = None

    def setup(self, schedule: Schedule, res: ScheduleResult) -> None:
        pass

    async def sentinel(self, seed: int) -> tuple[int, int]:
        """As for raftreg; convergence is "every member's Status reports one revision" (etcd's
        Status has no hash: `state_violations` compares the members' data instead). etcd cannot
        retry a write safely, so a sentinel whose outcome is unknown is followed by another
        (sentinel values are exempt from the written-twice check)."""
        await asyncio.to_thread(self.c.wait_converged, 30.0)
        async with EtcdRegistryClient(self.c.endpoints, timeout=3.0, retry_budget=20.0) as c:
            for i in range(3):
                try:
                    end_rev = (await c.put(SENTINEL, f"/zz{seed}-{i}")).revision
                    break
                except E.OutcomeUnknown:
                    if i == 2:
                        raise
        rev = await asyncio.to_thread(self.c.wait_converged, 30.0)
        return end_rev, rev

    async def committed_history(self, name: str, end_rev: int) -> list[Event]:
        return await _etcd_committed_history(self.c.client[name], end_rev)

    async def state_violations(self, end_rev: int, committed: Sequence[Event]) -> list[str]:
        """Every member's whole data at `end_rev` (a serializable range of every key) is the
        same, and is the replay of the committed history."""
        out: list[str] = []
        replayed = final_state(committed)
        states: dict[str, dict[bytes, KeyValue]] = {}
        for n in self.c.names:
            try:
                states[n] = await _etcd_all_keys(self.c.client[n], end_rev)
            except E.RegistryError as e:
                out.append(f"could not read {n}'s data at {end_rev}: {e}")
        first = self.c.names[0]
        for n, st in states.items():
            if n != first and first in states and st != states[first]:
                diff = sorted(k for k in st.keys() | states[first].keys()
                              if st.get(k) != states[first].get(k))
                out.append(f"{n}'s data at {end_rev} differs from {first}'s: keys {diff[:5]}")
            if st != replayed:
                out.append(f"{n}'s state at {end_rev} is not the replayed history")
        return out


_Target = _RaftregTarget | _EtcdTarget


async def _run(schedule: Schedule, root: Path, wcfg: WorkloadConfig,
               settle_s: float) -> ScheduleResult:
    if schedule.backend not in BACKENDS:
        raise ValueError(f"unknown backend {schedule.backend!r}")
    res = ScheduleResult(schedule, root=str(root))
    rng = random.Random(schedule.seed)
    t0 = time.monotonic()
    target: _Target = (_EtcdTarget(root, schedule) if schedule.backend == "etcd"
                       else _RaftregTarget(root, schedule))
    cluster = target.cluster
    to_thread = asyncio.to_thread
    h = History()
    wl = Workload(target.c.endpoints, h, random.Random(rng.getrandbits(64)), wcfg,
                  backend=schedule.backend)
    driver = _Driver(cluster, random.Random(rng.getrandbits(64)))
    stop_ops, stop_watches, stop_polls = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ops: list[asyncio.Future[None]] = []
    watches: list[asyncio.Future[None]] = []
    polls: list[asyncio.Future[None]] = []
    try:
        await to_thread(cluster.start)
        if target.poller is not None:
            polls.append(asyncio.ensure_future(target.poller.run(stop_polls)))
        await to_thread(cluster.wait_leader, 30.0)
        target.setup(schedule, res)
        ops, watches = wl.start(stop_ops, stop_watches)
        await asyncio.sleep(0.5)
        for step in schedule.steps:
            res.violations += driver.exits()
            res.applied.append(await to_thread(driver.apply, step))
            await asyncio.sleep(step.hold)
            await to_thread(driver.after_hold, step)
        res.violations += driver.exits()
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
        stop_polls.set()
        await asyncio.gather(*polls, return_exceptions=True)
        if target.poller is not None:
            res.leaders = {t: sorted(ns) for t, ns in target.poller.claims.items()}
            res.counts["status_polls"] = target.poller.polls
            res.counts["status_polls:fail"] = target.poller.failed
            res.violations += target.poller.violations()
        try:
            end_rev, converged_rev = await target.sentinel(schedule.seed)
        except (TimeoutError, E.RegistryError) as e:
            res.violations.append(f"no convergence after healing: {e}")
            return res
        if converged_rev < end_rev:
            res.violations.append(f"converged at {converged_rev} < sentinel {end_rev}")
        try:
            histories = [await target.committed_history(n, end_rev) for n in cluster.names]
        except (TimeoutError, grpc.aio.AioRpcError, E.RegistryError) as e:
            codes = {n: p.poll() for n, p in cluster.procs.items()}
            res.violations.append(f"could not read the committed history (exit codes {codes}, "
                                  f"{time.monotonic() - t0:.1f}s): {e}")
            return res
        committed = [e for e in histories[0] if e.kv.mod_revision <= end_rev]
        first = cluster.names[0]
        for n, other in zip(cluster.names[1:], histories[1:], strict=True):
            mine = [e for e in other if e.kv.mod_revision <= end_rev]
            if mine != committed:
                diff = next((i for i, (x, y) in enumerate(zip(committed, mine, strict=False))
                             if x != y), min(len(committed), len(mine)))
                res.violations.append(
                    f"{n}'s committed history differs from {first}'s at event {diff}")
        res.violations += check_committed(committed)
        res.violations += await target.state_violations(end_rev, committed)
        res.violations += _check_writes(h, committed)
        lagging = await _wait_watches(wl, committed, WATCH_CATCH_UP_S)
        stop_watches.set()
        await asyncio.gather(*watches, return_exceptions=True)
        res.violations += lagging.values()
        fcommitted = [e for e in committed if e.kv.key.startswith(PREFIX.encode())]
        for w in wl.watches:
            res.violations += check_watch(w, fcommitted, complete=w.name not in lagging,
                                          until=end_rev)
        res.violations += h.violations
        res.violations += [f"client raised outside the error tree: {u}" for u in h.unexpected]
        checked = h.lincheck_ops()
        lin = await to_thread(L.check, L.KVModel(), checked, LINCHECK_TIMEOUT_S)
        res.lincheck = lin.explain()
        if lin.ok is False:
            res.violations.append("register history is not linearizable:\n" + lin.explain())
        elif lin.ok is None:  # an unchecked history proves nothing: never a silent pass
            res.lincheck = "undecided (timeout) " + res.lincheck
            res.violations.append(
                f"linearizability undecided: the checker did not finish within "
                f"{LINCHECK_TIMEOUT_S:g}s ({len(checked)} operations); nothing was proven about "
                f"this history. Replay the schedule with a longer limit or fewer operations "
                f"(LINCHECK_TIMEOUT_S in raftreg/testing/faults.py)")
    finally:
        stop_ops.set()
        stop_watches.set()
        stop_polls.set()
        for t in ops + watches + polls:
            t.cancel()
        await asyncio.gather(*ops, *watches, *polls, return_exceptions=True)
        await wl.close()
        await to_thread(cluster.close)
        res.elapsed = time.monotonic() - t0
        if res.violations:  # kept with the logs: the recorded operations, for the diagnosis
            with contextlib.suppress(OSError, TypeError, ValueError):
                (root / "history.json").write_text(json.dumps(h.to_json()) + "\n")
    return res


def run_schedule(
    schedule: Schedule,
    root: Path,
    *,
    workload: WorkloadConfig | None = None,
    settle_s: float = 1.0,
    keep: bool = False,
) -> ScheduleResult:
    """Run one schedule on a fresh cluster (raftreg's, or a real etcd for
    `schedule.backend == "etcd"`) under `root` and check it. A cluster left in `root` by an
    earlier run is removed first; this one (logs, data) is removed afterwards unless the
    schedule failed (then `root/history.json` holds the recorded operations) or `keep` is
    set."""
    if (root / "cluster.toml").exists() or any(root.glob("*.etcd")):  # a previous run's
        unmount_stale(root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(_run(schedule, root, workload or WorkloadConfig(), settle_s))
    if res.ok and not keep:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    return res
