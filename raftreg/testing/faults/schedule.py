"""Fault schedules: the fault kinds and their draw weights, `Step`, `Schedule`, drawing a
schedule (`make_step`, `random_schedule`), a run's outcome (`ScheduleResult`) and the JSON
round trip that saves a failing schedule for replay (`save_failure`, `load_schedule`).

Pure data: nothing here touches a cluster (the kinds themselves are described in the package
docstring, `raftreg.testing.faults`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
DROP_RATES = (0.05, 0.2, 0.5)
DELAYS_MS = (5.0, 30.0, 120.0)
HOLDS = (0.5, 1.0, 1.5, 2.5)


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
