"""The server commands, run in this process without a client: `node` (one node of the cluster
in the configuration), `dev` (a single-node development registry, announced to other shells
in this directory by its marker file) and `secret` (create a cluster secret file). The server
code is imported only when one of them runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from raftreg.cli.connect import _DEV_MARKER, DEV_DATA_DIR
from raftreg.cli.output import _Ctx
from raftreg.config import dev_config, load_config, split_hostport, write_secret_file
from raftreg.errors import FailedPrecondition


def _serve_node() -> Callable[..., int]:
    """Imported only when a server command runs: client commands never load the server (and
    `pip install raftreg` does not install what it needs)."""
    try:
        from raftreg.daemon.main import serve_node
    except ModuleNotFoundError as e:
        raise FailedPrecondition(
            f"running a node needs the server extra ({e.name} is missing): "
            "pip install 'raftreg[server]'") from None
    return serve_node


def cmd_node(ns: argparse.Namespace, ctx: _Ctx) -> int:
    cfg = load_config(getattr(ns, "config", "cluster.toml"))
    cfg.node(ns.name)  # fail early with a clear message for an unknown name
    return _serve_node()(cfg, ns.name, join=ns.join)


def _port_free(host: str, port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _raft_address(listen: str) -> str:
    """A free port next to the client port (port + 1 when free, else any free port)."""
    host, port = split_hostport(listen)
    if _port_free(host, port + 1):
        return f"{host}:{port + 1}"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        free = int(s.getsockname()[1])
    return f"{host}:{free}"


def cmd_dev(ns: argparse.Namespace, ctx: _Ctx) -> int:
    split_hostport(ns.listen)
    if ns.http:
        split_hostport(ns.http)
    cfg = dev_config(ns.data_dir, client=ns.listen, raft=_raft_address(ns.listen), http=ns.http)
    serve = _serve_node()
    ctx.err.write(f"raftreg dev: gRPC (raftreg.v1 and etcd's etcdserverpb) on {ns.listen}, "
                  f"data in {ns.data_dir}\n")
    if ns.http:
        ctx.err.write(f"raftreg dev: etcd's JSON gateway (/v3/...) and /metrics on "
                      f"http://{ns.http}; the dashboard on http://{ns.http}/ui/\n")
    hint = "raftreg put a b" if Path(ns.data_dir).resolve() == Path(DEV_DATA_DIR).resolve() \
        else f"raftreg --endpoints {ns.listen} put a b"
    ctx.err.write(f"raftreg dev: from another shell in this directory: {hint}; etcdctl: "
                  f"etcdctl --endpoints {ns.listen} put a b\n")
    marker = Path(ns.data_dir) / _DEV_MARKER
    Path(ns.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "client": ns.listen}))
    try:
        return serve(cfg, "dev")
    finally:
        marker.unlink(missing_ok=True)


def cmd_secret(ns: argparse.Namespace, ctx: _Ctx) -> int:
    path = Path(ns.file)
    if write_secret_file(path):
        ctx.out.write(f"wrote a new cluster secret to {path} (mode 0600); name it as "
                      "secret_file in [cluster] and keep it out of version control\n")
        return 0
    ctx.out.write(f"{path} exists; left as it is\n")
    return 0
