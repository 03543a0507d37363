"""Putting a cluster into a fault state: `FaultCluster` (what a cluster must offer) and
`_Driver`, which resolves a `Step`'s targets ("leader", "follower", a name) against the live
cluster and applies it.

The driver runs in a worker thread (the runner calls it through `asyncio.to_thread`); it is
the only thing that stops or starts nodes during a schedule, and `downed` holds exactly the
nodes it stopped and has not started since, so that a node that exits by itself is told apart
(`exits`).
"""

from __future__ import annotations

import random
import subprocess
from typing import Protocol

from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.faults.schedule import Step


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
