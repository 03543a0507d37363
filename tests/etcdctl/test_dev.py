"""`raftreg dev` as a newcomer meets it from the reference document: etcd's gRPC for etcdctl
on the client port, and the document's curl on the HTTP port `raftreg dev` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raftreg.testing import ProcessCluster
from raftreg.testing.ports import free_ports
from raftreg.testing.procs import ProcessGroup

from .ctl import Ctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

READY_S = 30.0  # a one-node registry elects itself within an election timeout; x many


REPO = Path(__file__).resolve().parents[2]


def test_dev_serves_etcdctl_the_documents_curl_and_the_cli_without_flags(tmp_path: Path) -> None:
    client, raft_hint, http = free_ports(3)
    del raft_hint
    # the directory holds a cluster.toml too (as the repository does; its nodes on free ports,
    # never started): `raftreg dev` running here is still what a flag-less CLI here talks to
    (tmp_path / "cluster.toml").write_text(ProcessCluster(tmp_path / "never-started")
                                           .config_path.read_text())
    with ProcessGroup(tmp_path) as g:
        g.spawn("dev", [sys.executable, "-m", "raftreg.cli", "dev",
                        "--listen", f"127.0.0.1:{client}", "--http", f"127.0.0.1:{http}"])
        ctl = Ctl([f"127.0.0.1:{client}"])
        deadline = time.monotonic() + READY_S
        while ctl.run("endpoint", "health", ok=False).code != 0:
            assert g.alive("dev") and time.monotonic() < deadline, g.log_text("dev")
            time.sleep(0.1)
        banner = g.log_text("dev")
        assert f"http://127.0.0.1:{http}" in banner and f"127.0.0.1:{client}" in banner
        # curl -L http://localhost:2379/v3/kv/put -X POST -d '{"key": "Zm9v", "value": "YmFy"}'
        req = urllib.request.Request(f"http://127.0.0.1:{http}/v3/kv/put", method="POST",
                                     data=b'{"key": "Zm9v", "value": "YmFy"}')
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200 and "revision" in json.load(resp)["header"]
        assert ctl.run("get", "foo", "--print-value-only").lines == ["bar"]
        assert f"the dashboard on http://127.0.0.1:{http}/ui/" in banner
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/ui/api/keys?prefix=foo",
                                    timeout=10) as resp:
            assert [kv["value"] for kv in json.load(resp)["kvs"]] == ["bar"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTREG_")}
        env["PYTHONPATH"] = str(REPO)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "raftreg.cli", *args], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=30)

        assert cli("get", "foo").stdout.split() == ["foo", "bar"]  # no flags
        assert cli("put", "a", "b").returncode == 0
        assert ctl.run("get", "a", "--print-value-only").lines == ["b"]
        assert "raftreg put a b" in g.log_text("dev")  # what `raftreg dev` told the user
    r = cli("get", "a")  # dev is gone: its marker with it, so back to cluster.toml's nodes
    assert r.returncode == 3 and "scripts/start-cluster.sh" in r.stderr
