"""A service registered the way the reference document shows, with etcd's own etcdctl (as a Go
or Java service's clientv3 would write it), is a first-class instance: `raftreg services`
lists it and the gateway balances calls to it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest

from raftreg.testing import ProcessCluster
from services.testing import ServiceGroup, get_json
from tests.etcdctl.ctl import Ctl
from tests.services.conftest import GENEROUS_DEADLINE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROUTE_BOUND_S = 20.0  # the gateway's resolver sees a put within a watch round trip; x many


async def test_an_instance_put_with_etcdctl_as_the_document_shows_is_listed_and_served(
    group: ServiceGroup, registry_cluster: ProcessCluster, http: aiohttp.ClientSession
) -> None:
    # A user service that registers itself under another name: "user-doc" gets only what
    # etcdctl writes below.
    user = await asyncio.to_thread(group.start_service, "user", "udoc", "--service",
                                   "user-doc-self")
    gw = await asyncio.to_thread(
        group.start_service, "gateway", "g-doc", "--service", "gateway-doc",
        "--user-service", "user-doc", "--chat-service", "chat-nobody", *GENEROUS_DEADLINE)
    status, doc = await get_json(http, f"{gw.http_url}/user/2")
    assert (status, doc["code"]) == (503, "NO_INSTANCE")

    ctl = Ctl(list(registry_cluster.endpoints))
    granted = await asyncio.to_thread(ctl.run, "lease", "grant", "30")
    lease = granted.lines[0].split()[1]
    value = json.dumps({"name": "user-doc", "addr": user.grpc, "version": "v1"})
    await asyncio.to_thread(ctl.run, "put", f"/services/user-doc/{user.grpc}", value,
                            f"--lease={lease}")

    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "raftreg.cli", "--endpoints", ",".join(registry_cluster.endpoints),
         "-w", "json", "services", "list", "user-doc"],
        capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    (inst,) = json.loads(listed.stdout)["instances"]
    assert (inst["id"], inst["addr"], inst["version"], inst["lease"]) == (
        user.grpc, user.grpc, "v1", int(lease, 16))

    deadline = asyncio.get_running_loop().time() + ROUTE_BOUND_S
    while True:
        status, doc = await get_json(http, f"{gw.http_url}/user/2")
        if status == 200:
            break
        assert asyncio.get_running_loop().time() < deadline, (status, doc)
        await asyncio.sleep(0.1)
    assert (doc["name"], doc["served_by"]) == ("Bob", "udoc")

    # the lease's end (etcdctl revoke, as a crashed Go service's expiry) takes it out again
    await asyncio.to_thread(ctl.run, "lease", "revoke", lease)
    while True:
        status, doc = await get_json(http, f"{gw.http_url}/user/2")
        if status == 503:
            break
        assert asyncio.get_running_loop().time() < deadline + ROUTE_BOUND_S, (status, doc)
        await asyncio.sleep(0.1)
