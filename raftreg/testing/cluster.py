"""Real raftreg node processes on loopback with free ports, for tests and benchmarks.

`ProcessCluster` writes a cluster.toml into its own directory, starts one process per node
(`python -m raftreg.daemon`; `python -m raftreg.testing.node` with faults), and can kill -9,
pause, resume and restart any of them. Every process it started is stopped by `close()` (also
on `with` exit).

Network faults (TEST ONLY): a cluster made with `faults=True` runs every node with the
fault-injection transport (the test launcher raftreg/testing/node.py with `--fault-file`,
rules in faults.json beside cluster.toml) and can `partition` / `isolate` nodes (raft
traffic only; clients still reach every node), drop a fraction of messages, delay them, turn a
node into a deliberately broken one (`unsafe_local_reads`, `unsafe_no_sync`), and `heal()`
everything.

Power cuts (TEST ONLY): a cluster made with `power_cuts=True` mounts each node's data dir from
the power-cut file system (`raftreg.testing.powercut`: it keeps only what the node synced) and
can `power_cut(n)` / `power_cut()` (all): kill -9, then drop every unsynced write on that node's
(every node's) data dir. The node stays down until started (`start`, `heal`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from raftreg.config import new_secret
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing.powercut import Disks, cut_power
from raftreg.testing.procs import ProcessGroup

_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding raftreg/


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


class ProcessCluster(ProcessGroup):
    def __init__(self, root: Path, size: int = 3, *, faults: bool = False,
                 power_cuts: bool = False, sync_delay_ms: float = 0.0,
                 disk_metadata: str = "strict", **settings: Any) -> None:
        super().__init__(root)
        ports = self.reserve_ports(3 * size)
        self.names = [f"n{i + 1}" for i in range(size)]
        self.raft = {n: f"127.0.0.1:{ports[3 * i]}" for i, n in enumerate(self.names)}
        self.client = {n: f"127.0.0.1:{ports[3 * i + 1]}" for i, n in enumerate(self.names)}
        self.http = {n: f"127.0.0.1:{ports[3 * i + 2]}" for i, n in enumerate(self.names)}
        self.config_path = self.root / "cluster.toml"
        cluster = {"name": "raftreg-test", "secret": new_secret(), "data_dir": "data"}
        self.fault_path: Path | None = None
        self._blocked: set[tuple[str, str]] = set()  # (from, to): raft messages dropped
        self._rules: dict[str, dict[str, Any]] = {n: {} for n in self.names}
        if faults:
            self.fault_path = self.root / "faults.json"
            self._write_faults()
        cluster.update(settings)
        self._cluster = cluster
        self._write_config()
        self.disks: Disks | None = None
        if power_cuts:
            # sync_delay_ms: every fsync on those disks takes that much longer (a slower disk:
            # a power cut then more often finds a sync under way, i.e. an unsynced tail)
            # disk_metadata: "strict" or "ordered" (see raftreg.testing.powercut)
            self.disks = Disks(self.root, {n: self.data_dir(n) for n in self.names},
                               sync_delay_ms=sync_delay_ms, metadata=disk_metadata)

    def data_dir(self, name: str) -> Path:
        return self.root / str(self._cluster["data_dir"]) / name

    def _write_config(self) -> None:
        lines = ["[cluster]"] + [f"{k} = {_toml_value(v)}" for k, v in self._cluster.items()]
        for n in self.names:
            lines += ["", "[[node]]", f'name = "{n}"', f'raft = "{self.raft[n]}"',
                      f'client = "{self.client[n]}"', f'http = "{self.http[n]}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    def add_node(self) -> str:
        """Configure one more node with fresh ports (cluster.toml is rewritten); it is neither
        started nor a member: `member add` it, then `start` it. Returns its name."""
        i = len(self.names) + 1
        while f"n{i}" in self.raft:
            i += 1
        name = f"n{i}"
        raft, client, http = (f"127.0.0.1:{p}" for p in self.reserve_ports(3))
        self.names.append(name)
        self.raft[name], self.client[name], self.http[name] = raft, client, http
        self._rules[name] = {}
        self._write_config()
        if self.fault_path is not None:
            self._write_faults()
        if self.disks is not None:
            self.disks.add(name, self.data_dir(name))
        return name

    def forget_node(self, name: str) -> None:
        """Drop a node that left the cluster from this group (its process must have exited;
        it is killed if not) and from cluster.toml."""
        self.kill(name)
        self.names.remove(name)
        self._write_config()

    @property
    def endpoints(self) -> list[str]:
        return [self.client[n] for n in self.names]

    # ------------------------------------------------------------------ processes

    def start(self, *names: str, join: bool = False) -> None:
        """Start nodes (default: all). `join`: they were just added with `member add`."""
        # faulthandler: a node that crashes (e.g. SIGSEGV) leaves its stacks in its log.
        # PYTHONPATH: nodes run the raftreg this process imported (a git worktree's, not the
        # one the virtualenv's editable install points at).
        path = [_SOURCE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
                   PYTHONPATH=os.pathsep.join(path))
        for n in names or self.names:
            if self.disks is not None and not self.alive(n):
                self.disks[n].mount()
            launcher = (["raftreg.daemon"] if self.fault_path is None else
                        ["raftreg.testing.node", "--fault-file", str(self.fault_path)])
            self.spawn(n, [sys.executable, "-m", *launcher,
                           "--config", str(self.config_path), "--name", n,
                           *(["--join"] if join else [])], env)

    # ------------------------------------------------------------------ network faults

    def _write_faults(self) -> None:
        if self.fault_path is None:
            raise RuntimeError("this cluster was not made with faults=True")
        doc: dict[str, dict[str, Any]] = {}
        for n in self.names:
            rules = dict(self._rules[n])
            rules["drop_to"] = sorted(self.raft[b] for a, b in self._blocked if a == n)
            rules["drop_from"] = sorted(self.raft[a] for a, b in self._blocked if b == n)
            doc[self.raft[n]] = rules
        tmp = self.fault_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.fault_path)  # atomic: a node never reads half a file

    def partition(self, a: str, b: str, one_way: bool = False) -> None:
        """Drop raft messages from a to b (and from b to a unless `one_way`)."""
        self._blocked.add((a, b))
        if not one_way:
            self._blocked.add((b, a))
        self._write_faults()

    def isolate(self, name: str) -> None:
        """Cut `name` off from every other node (both ways)."""
        for other in self.names:
            if other != name:
                self._blocked |= {(name, other), (other, name)}
        self._write_faults()

    def drop_rate(self, rate: float, names: list[str] | None = None) -> None:
        """Drop this fraction of every raft message `names` (default all) send or receive."""
        for n in names or self.names:
            self._rules[n]["drop_rate"] = rate
        self._write_faults()

    def delay(self, ms: float, names: list[str] | None = None) -> None:
        """Hold back every raft message `names` (default all) send by `ms` (FIFO per link)."""
        for n in names or self.names:
            self._rules[n]["delay_ms"] = ms
        self._write_faults()

    def unsafe_local_reads(self, name: str, on: bool = True) -> None:
        """DELIBERATELY BROKEN node: serve linearizable reads without the read barrier."""
        self._rules[name]["unsafe_local_reads"] = on
        self._write_faults()

    def unsafe_no_sync(self, name: str, on: bool = True) -> None:
        """DELIBERATELY BROKEN node: its journal never fsyncs (loses writes in a power cut)."""
        self._rules[name]["unsafe_no_sync"] = on
        self._write_faults()

    def heal_network(self) -> None:
        """Remove every partition, drop and delay (deliberately broken nodes stay broken)."""
        self._blocked.clear()
        for n in self.names:
            self._rules[n] = {k: v for k, v in self._rules[n].items()
                              if k in ("unsafe_local_reads", "unsafe_no_sync")}
        self._write_faults()

    # ------------------------------------------------------------------ power cuts

    def power_cut(self, *names: str, torn: bool = False, seed: int = 0) -> dict[str, Any]:
        """kill -9 `names` (default all) at once, then drop every write they had not synced
        (`torn`: keep a random prefix of unsynced tails; see raftreg.testing.powercut). They
        stay down until started. Returns what each data dir lost."""
        if self.disks is None:
            raise RuntimeError("this cluster was not made with power_cuts=True")
        return cut_power(self.disks, self.kill, names or self.names, torn=torn, seed=seed)

    def heal(self) -> None:
        """Heal the network (if faults are on), resume paused nodes, start dead ones."""
        if self.fault_path is not None:
            self.heal_network()
        for n in sorted(self.paused):
            if self.alive(n):
                self.resume(n)
        self.paused.clear()
        dead = [n for n in self.names if not self.alive(n)]
        if dead:
            self.start(*dead)

    def close(self) -> None:
        """Stop every node, then unmount every power-cut mount (also after a failure)."""
        try:
            super().close()
        finally:
            if self.disks is not None:
                self.disks.close()

    # ------------------------------------------------------------------ observation

    def status(self, name: str, timeout: float = 1.0) -> pb.StatusResponse | None:
        with grpc.insecure_channel(self.client[name]) as ch:
            try:
                resp: pb.StatusResponse = pbg.MaintenanceStub(ch).Status(
                    pb.StatusRequest(), timeout=timeout
                )
                return resp
            except grpc.RpcError:
                return None

    def leader(self, among: list[str] | None = None) -> str | None:
        """The node that the live nodes agree leads (None while they disagree)."""
        seen: set[int] = set()
        by_id: dict[int, str] = {}
        for n in among or [x for x in self.names if self.alive(x) and x not in self.paused]:
            st = self.status(n)
            if st is None or st.leader == 0:
                return None
            seen.add(st.leader)
            by_id[st.header.member_id] = n
        if len(seen) != 1:
            return None
        return by_id.get(seen.pop())

    def wait_leader(self, timeout: float = 20.0, among: list[str] | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader(among)
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout}s; logs in {self.root}")

    def wait_converged(self, timeout: float = 20.0) -> pb.StatusResponse:
        """Wait until every live node reports the same revision and hash."""
        deadline = time.monotonic() + timeout
        while True:
            sts = [self.status(n) for n in self.names if self.alive(n) and n not in self.paused]
            if all(s is not None for s in sts):
                keys = {(s.header.revision, s.hash) for s in sts if s is not None}
                if len(keys) == 1 and sts[0] is not None:
                    return sts[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes did not converge: {sts}")
            time.sleep(0.05)
