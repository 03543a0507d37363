"""`raftreg config ...` and `raftreg services ...` against a real three-node cluster (one per
module), through `raftreg.cli.run` in-process, and the Ctrl-C'd watch commands as real
processes sent SIGINT."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from raftreg.cli import run
from raftreg.client import GrpcRegistryClient
from raftreg.discovery.instance import Instance, encode_instance
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

# A test run started in the background by a non-interactive shell inherits SIGINT as ignored,
# and so would the CLI: give it the default Ctrl-C behaviour explicitly.
_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'raftreg'; runpy.run_module('raftreg.cli', run_name='__main__')"
)


def cli(cluster: ProcessCluster, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--endpoints", ",".join(cluster.endpoints), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_config_set_get_history_rollback(shared_cluster: ProcessCluster) -> None:
    c = shared_cluster
    code, out, err = cli(c, "config", "set", "cli-gw", "ratelimit.rps=100", "policy=weighted")
    assert (code, err) == (0, "")
    r1 = int(out.split()[-1])
    code, out, _ = cli(c, "config", "set", "cli-gw", "ratelimit.rps=50", "--delete", "policy",
                       "--expect-rev", str(r1), "-w", "json")
    r2 = json.loads(out)["header"]["revision"]
    assert code == 0 and r2 == r1 + 1
    assert cli(c, "config", "get", "cli-gw") == (0, "ratelimit.rps=50\n", "")
    code, _, err = cli(c, "config", "set", "cli-gw", "x=1", "--expect-rev", str(r1))
    assert (code, err) == (1, f"Error: config of cli-gw changed after revision {r1}\n")
    code, out, _ = cli(c, "config", "history", "cli-gw")
    assert out.splitlines() == [f"{r1} SET ratelimit.rps=100", f'{r1} SET policy="weighted"',
                                f"{r2} SET ratelimit.rps=50", f"{r2} DELETE policy"]
    code, out, _ = cli(c, "config", "rollback", "cli-gw", "--rev", str(r1))
    assert code == 0 and out.startswith(f"rolled back cli-gw to revision {r1}: ")
    code, out, _ = cli(c, "config", "get", "cli-gw", "-w", "json")
    assert json.loads(out)["config"] == {"ratelimit.rps": 100, "policy": "weighted"}


def test_services_list_shows_instances_under_a_lease(shared_cluster: ProcessCluster) -> None:
    async def register() -> int:
        async with GrpcRegistryClient(shared_cluster.endpoints) as c:
            lease = await c.lease_grant(30)
            for iid, port in (("a1", 7001), ("a2", 7002)):
                inst = Instance("cli-svc", iid, f"127.0.0.1:{port}", zone="z1",
                                registered_at=time.time())
                await c.put(inst.key, encode_instance(inst), lease=lease.id)
            await c.put("/services/cli-svc/broken", "{", lease=lease.id)
            return lease.id

    lease_id = asyncio.run(register())
    code, out, err = cli(shared_cluster, "services", "list", "cli-svc")
    assert code == 0
    rows = [line.split(", ") for line in out.splitlines()]
    assert [r[:7] for r in rows] == [["cli-svc", "a1", "127.0.0.1:7001", "1", "z1", "", "0s"],
                                     ["cli-svc", "a2", "127.0.0.1:7002", "1", "z1", "", "0s"]]
    # the lease in hex and its remaining TTL (a second may pass between grant and list)
    assert all(r[7] == f"{lease_id:x}" and r[8] in ("30s", "29s") for r in rows), rows
    assert err == ("Warning: skipping malformed registration /services/cli-svc/broken: "
                   "cli-svc/broken: value is not JSON, nor a host:port address\n")
    code, out, _ = cli(shared_cluster, "services", "list", "cli-svc", "-w", "json")
    assert [i["lease"] for i in json.loads(out)["instances"]] == [lease_id, lease_id]
    assert all(i["granted_ttl"] == 30 for i in json.loads(out)["instances"])
    assert cli(shared_cluster, "lease", "revoke", f"{lease_id:x}")[0] == 0
    assert cli(shared_cluster, "services", "list", "cli-svc") == (0, "", "")


async def _spawn(cluster: ProcessCluster, err_path: Path, *argv: str) -> asyncio.subprocess.Process:
    # stderr goes to a file: an undrained pipe could fill up and block the CLI's exit.
    with open(err_path, "wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WITH_CTRL_C, *argv, "--endpoints", ",".join(cluster.endpoints),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


async def _lines(proc: asyncio.subprocess.Process, n: int) -> list[str]:
    assert proc.stdout is not None
    return [
        (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().rstrip("\n")
        for _ in range(n)
    ]


async def _ctrl_c(proc: asyncio.subprocess.Process, err_path: Path) -> None:
    proc.send_signal(signal.SIGINT)
    rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0, err_path.read_text(errors="replace")[-2000:]


async def test_config_and_services_watch_print_changes_and_exit_0_on_ctrl_c(
    shared_cluster: ProcessCluster, tmp_path: Path
) -> None:
    async with GrpcRegistryClient(shared_cluster.endpoints) as c:
        inst = Instance("watch-svc", "w1", "127.0.0.1:7100")
        await c.put(inst.key, encode_instance(inst))
        r1 = await c.put("/config/watch-gw/timeout_ms", "250")
        cfg_err, svc_err = tmp_path / "config.stderr", tmp_path / "services.stderr"
        cfg = await _spawn(shared_cluster, cfg_err, "config", "watch", "watch-gw",
                           "--rev", str(r1.revision))
        svc = await _spawn(shared_cluster, svc_err, "services", "watch", "watch-svc")
        try:
            assert await _lines(cfg, 1) == [f"{r1.revision} SET timeout_ms=250"]
            assert await _lines(svc, 1) == [
                "ADDED watch-svc/w1 127.0.0.1:7100 weight=1 zone= version="]
            r2 = await c.delete("/config/watch-gw/timeout_ms")
            await c.delete(inst.key)
            assert await _lines(cfg, 1) == [f"{r2.revision} DELETE timeout_ms"]
            assert await _lines(svc, 1) == [
                "REMOVED watch-svc/w1 127.0.0.1:7100 weight=1 zone= version="]
            await _ctrl_c(cfg, cfg_err)
            await _ctrl_c(svc, svc_err)
        finally:
            for p in (cfg, svc):
                if p.returncode is None:
                    p.kill()
                    await p.wait()
