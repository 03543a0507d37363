"""`raftreg services list`: instances registered under a lease, on both process backends (see
conftest). The command runs in-process through `raftreg.cli.run` with the backend's URL as
`--endpoints` (on a thread: it runs its own event loop)."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from raftreg.cli import run
from raftreg.client import RegistryClient
from raftreg.discovery.instance import Instance, encode_instance
from tests.contract.conftest import MIN_LEASE_TTL, Backend, process_only

# Process backends only: the CLI is given the backend's URL, which memory does not have.
pytestmark = [pytest.mark.slow, process_only]


async def services(backend: Backend, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        run, ["--endpoints", backend.url, "services", *argv], stdout=out, stderr=err
    )
    return code, out.getvalue(), err.getvalue()


async def test_services_list_shows_instances_registered_under_a_lease(
    registry: RegistryClient, backend: Backend, prefix: str
) -> None:
    svc = prefix.strip("/").replace("/", "-")
    lease = await registry.lease_grant(MIN_LEASE_TTL * 5)
    now = time.time()
    for iid, port, zone in (("i1", 7001, "z1"), ("i2", 7002, "z2")):
        inst = Instance(svc, iid, f"127.0.0.1:{port}", weight=2, zone=zone, version="v3",
                        registered_at=now)
        await registry.put(inst.key, encode_instance(inst), lease=lease.id)
    await registry.put(f"/services/{svc}/bad", "not json", lease=lease.id)

    code, out, err = await services(backend, "list", svc)
    assert code == 0
    rows = [line.split(", ") for line in out.splitlines()]
    assert [r[:6] for r in rows] == [[svc, "i1", "127.0.0.1:7001", "2", "z1", "v3"],
                                     [svc, "i2", "127.0.0.1:7002", "2", "z2", "v3"]]
    assert all(r[6].endswith("s") for r in rows)
    assert err == (f"Warning: skipping malformed registration /services/{svc}/bad: "
                   f"{svc}/bad: value is not JSON, nor a host:port address\n")

    code, out, _ = await services(backend, "list", svc, "-w", "json")
    doc = json.loads(out)
    assert [(i["id"], i["lease"], i["zone"]) for i in doc["instances"]] == [
        ("i1", lease.id, "z1"), ("i2", lease.id, "z2")]
    code, out, _ = await services(backend, "list", svc, "-w", "table")
    assert "| SERVICE" in out and f"| {svc} | i2 | 127.0.0.1:7002 |" in out

    code, out, _ = await services(backend, "list")  # every service
    assert code == 0 and f"{svc}, i1, " in out

    await registry.lease_revoke(lease.id)  # the lease takes its instances with it
    assert await services(backend, "list", svc) == (0, "", "")
