"""`raftreg dev` as a newcomer meets it from the reference document: etcd's gRPC for etcdctl
on the client port, and the document's curl on the HTTP port `raftreg dev` prints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raftreg.testing.cluster import free_ports
from raftreg.testing.procs import ProcessGroup

from .ctl import Ctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

READY_S = 30.0  # a one-node registry elects itself within an election timeout; x many


def test_dev_serves_etcdctl_and_the_documents_curl(tmp_path: Path) -> None:
    client, raft_hint, http = free_ports(3)
    del raft_hint
    with ProcessGroup(tmp_path) as g:
        g.spawn("dev", [sys.executable, "-m", "raftreg.cli", "dev",
                        "--listen", f"127.0.0.1:{client}", "--http", f"127.0.0.1:{http}",
                        "--data-dir", str(tmp_path / "data")])
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
        assert subprocess.run(  # and the raftreg CLI sees the same key
            [sys.executable, "-m", "raftreg.cli", "--endpoints", f"127.0.0.1:{client}",
             "get", "foo"], capture_output=True, text=True, timeout=30).stdout.split() == [
            "foo", "bar"]
