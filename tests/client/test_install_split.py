"""`pip install raftreg` is the client side only: its modules import nothing from the server
extra, and the package's core dependencies are exactly grpcio, protobuf, msgpack and
sortedcontainers (pure Python; the store the in-memory client runs on)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("pysyncobj", "cryptography", "aiohttp", "prometheus_client", "uvloop",
               "grpc_health", "grpc_reflection")

# Run in a fresh interpreter: every import of a server-only package fails, as it would in a
# virtualenv with only `pip install raftreg`.
PROBE = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError(f"server-only package imported: {{name}}")
sys.meta_path.insert(0, Block())
import raftreg.client, raftreg.discovery, raftreg.configcenter, raftreg.resilience
import raftreg.concurrency, raftreg.cli
from raftreg.client import connect, connect_sync
from raftreg.discovery import Registration, Resolver, SyncRegistration, SyncResolver
print("client side imports cleanly")
"""


def test_core_dependencies_are_the_client_sides() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip()
            for d in project["dependencies"]}
    assert core == {"grpcio", "protobuf", "msgpack", "sortedcontainers"}
    server = " ".join(project["optional-dependencies"]["server"])
    assert all(p.replace("_", "-") in server for p in
               ("pysyncobj", "cryptography", "aiohttp", "prometheus-client", "uvloop"))
    assert "raftreg[server]" in project["optional-dependencies"]["dev"]


@pytest.mark.slow
def test_the_client_side_imports_nothing_from_the_server_extra() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "client side imports cleanly"
