"""Server processes started by tests and benchmarks: spawning, kill -9, pause, resume, restart.

`ProcessGroup` is the part `ProcessCluster` (raftreg nodes) and `EtcdCluster` (etcd members)
share. Every process dies with the thread that started it (Linux PR_SET_PDEATHSIG), so a
crashed or killed test run never leaves servers behind. The prctl runs in a tiny launcher that
then execs the server: NOT in a `preexec_fn`, which runs Python (ctypes, dlopen) in the forked
child of a multi-threaded parent (gRPC threads) and now and then crashed there with SIGSEGV
before exec (found by the fault tests, seed 1021; the node's log stayed empty, exit -11).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from raftreg.testing.ports import free_ports, release_ports

# argv = [parent pid, program, args...]
_LAUNCHER = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)  # the parent is gone already
# A test run started in the background (`cmd &` in a script, as a CI runner may do) inherits
# SIGINT and SIGQUIT ignored, and so would every process it starts: then a test's Ctrl-C
# (SIGINT) would not reach the command under test. Processes start as from a terminal.
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""


class ProcessGroup:
    """Named server processes with logs `<root>/<name>.log`. Subclasses define `start`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self._ports: list[int] = []

    def start(self, *names: str) -> None:
        raise NotImplementedError

    def reserve_ports(self, n: int) -> list[int]:
        """n free ports, reserved for this group until `close` (see raftreg.testing.ports)."""
        ports = free_ports(n)
        self._ports += ports
        return ports

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        """Start `argv` (argv[0] is the program path) as `name` unless it is running."""
        if self.alive(name):
            return
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
            )
        self.paused.discard(name)

    def kill(self, name: str) -> None:
        """kill -9 (also ends a SIGSTOPped process) and reap."""
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        self.paused.discard(name)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets; peers and clients just hang."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)
        self.paused.discard(name)

    def restart(self, name: str) -> None:
        """kill -9 and start again at once (it recovers from its data directory)."""
        self.kill(name)
        self.start(name)

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def log_text(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """kill -9 and reap every process this group started. Idempotent."""
        for n in list(self.procs):
            self.kill(n)
        self.procs.clear()
        self.paused.clear()
        release_ports(self._ports)
        self._ports.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
