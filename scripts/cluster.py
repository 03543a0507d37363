"""Start/stop the local cluster described by cluster.toml (used by start-cluster.sh and
stop-cluster.sh). Each node runs in the background with its log and pid file in its data dir."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from raftreg.config import ClusterConfig, NodeConfig, load_config, write_secret_file
from raftreg.errors import InvalidArgument
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg


def _pid(cfg: ClusterConfig, node: NodeConfig) -> int | None:
    f = cfg.data_dir(node) / "node.pid"
    try:
        pid = int(f.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"raftreg.daemon" not in cmdline.read_bytes():
        return None  # a recycled pid that is not ours
    return pid


def _status(addr: str) -> pb.StatusResponse | None:
    with grpc.insecure_channel(addr) as ch:
        try:
            r: pb.StatusResponse = pbg.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1)
            return r
        except grpc.RpcError:
            return None


def start(cfg: ClusterConfig, timeout: float) -> int:
    if cfg.settings.secret_file:
        path = cfg.file(cfg.settings.secret_file)
        if write_secret_file(path):
            print(f"created a random cluster secret in {path} (mode 0600, not in git)")
    cfg.cluster_secret()  # refuse a missing, short or example secret before starting anything
    for node in cfg.nodes:
        d = cfg.data_dir(node)
        d.mkdir(parents=True, exist_ok=True)
        if (pid := _pid(cfg, node)) is not None:
            print(f"{node.name}: already running (pid {pid})")
            continue
        with open(d / "node.log", "ab") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "raftreg.daemon", "--config", str(cfg.path),
                 "--name", node.name],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (d / "node.pid").write_text(f"{p.pid}\n")
        print(f"{node.name}: started (pid {p.pid}), log {d / 'node.log'}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = [_status(n.client) for n in cfg.nodes]
        leaders = {s.leader for s in sts if s is not None}
        if all(s is not None for s in sts) and len(leaders) == 1 and 0 not in leaders:
            return 0
        time.sleep(0.1)
    print(f"no leader elected within {timeout:g}s; see the node logs", file=sys.stderr)
    return 1


def stop(cfg: ClusterConfig, timeout: float) -> int:
    for node in cfg.nodes:
        pid = _pid(cfg, node)
        if pid is None:
            print(f"{node.name}: not running")
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid(cfg, node) is not None:
            time.sleep(0.05)
        if _pid(cfg, node) is not None:
            os.kill(pid, signal.SIGKILL)
        (cfg.data_dir(node) / "node.pid").unlink(missing_ok=True)
        print(f"{node.name}: stopped (pid {pid})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--config", default="cluster.toml")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    try:
        cfg = load_config(a.config)
        return start(cfg, a.timeout) if a.action == "start" else stop(cfg, a.timeout)
    except InvalidArgument as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
