"""Real raftreg node processes on loopback with free ports, for tests and benchmarks.

`ProcessCluster` writes a cluster.toml into its own directory, starts one process per node
(`python -m raftreg.server`), and can kill -9, pause, resume and restart any of them. Every
process it started is stopped by `close()` (also on `with` exit).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies, so a
    crashed or killed test run never leaves node processes behind (Linux prctl)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (all held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


class ProcessCluster:
    def __init__(self, root: Path, size: int = 3, **settings: Any) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * size)
        self.names = [f"n{i + 1}" for i in range(size)]
        self.raft = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.client = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.config_path = self.root / "cluster.toml"
        cluster = {"name": "raftreg-test", "secret": "test-secret", "data_dir": "data"}
        cluster.update(settings)
        lines = ["[cluster]"] + [f"{k} = {_toml_value(v)}" for k, v in cluster.items()]
        for n in self.names:
            lines += ["", "[[node]]", f'name = "{n}"', f'raft = "{self.raft[n]}"',
                      f'client = "{self.client[n]}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def endpoints(self) -> list[str]:
        return [self.client[n] for n in self.names]

    # ------------------------------------------------------------------ processes

    def start(self, *names: str) -> None:
        for n in names or self.names:
            if n in self.procs and self.procs[n].poll() is None:
                continue
            log = open(self.root / f"{n}.log", "ab")  # noqa: SIM115 - owned by the process
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.procs[n] = subprocess.Popen(
                [sys.executable, "-m", "raftreg.server", "--config", str(self.config_path),
                 "--name", n],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                preexec_fn=_die_with_parent,
            )
            log.close()

    def kill(self, name: str) -> None:
        """kill -9 and reap."""
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            p.kill()  # SIGKILL also ends a SIGSTOPped process
            p.wait(timeout=10)

    def pause(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def close(self) -> None:
        for n in list(self.procs):
            self.kill(n)
        self.procs.clear()

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

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
        for n in among or [x for x in self.names if self.alive(x)]:
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
            sts = [self.status(n) for n in self.names if self.alive(n)]
            if all(s is not None for s in sts):
                keys = {(s.header.revision, s.hash) for s in sts if s is not None}
                if len(keys) == 1 and sts[0] is not None:
                    return sts[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes did not converge: {sts}")
            time.sleep(0.05)

    def followers(self) -> Iterator[str]:
        leader = self.wait_leader()
        return (n for n in self.names if n != leader and self.alive(n))
