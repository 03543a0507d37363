"""The same service processes against a real etcd, chosen by configuration only: the services
depend on the `RegistryClient` protocol, never on a backend."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from raftreg.client import RegistryClient, connect
from raftreg.discovery import instance_key
from raftreg.testing.etcd import EtcdCluster
from services.testing import (
    ServiceGroup,
    get_json,
    instance_ids,
    post_json,
    send_user_traffic,
    wait_stats,
)
from tests.services.conftest import GENEROUS_DEADLINE, HTTP_TIMEOUT_S

pytestmark = pytest.mark.slow  # an etcd cluster and service processes


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("services-etcd")) as c:
        c.start()
        c.wait_leader()
        yield c


@pytest.fixture
async def etcd_client(etcd: EtcdCluster) -> AsyncIterator[RegistryClient]:
    client = connect(etcd.url, timeout=3.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as s:
        yield s


async def test_services_choose_etcd_from_the_config_file(
    tmp_path: Path, etcd: EtcdCluster, etcd_client: RegistryClient, http: aiohttp.ClientSession
) -> None:
    root = tmp_path / "services"
    root.mkdir()
    # no --registry: each process reads ./cluster.toml (it runs in `root`)
    (root / "cluster.toml").write_text(
        f'[registry]\nbackend = "etcd"\nendpoints = {json.dumps(etcd.endpoints)}\n'
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAFTREG_BACKEND", "RAFTREG_ENDPOINTS")}
    with ServiceGroup(root, None, env=env) as g:
        procs = await asyncio.to_thread(g.start_many, [
            ("user", "e1", ["--ttl", "30"]),
            ("user", "e2", ["--ttl", "30"]),
            ("chat", "ec1", []),
            ("gateway", "eg1", ["--policy", "round_robin", *GENEROUS_DEADLINE]),
        ])
        gw = procs[-1].http_url
        assert (await etcd_client.get(instance_key("user", "e1"))).count == 1
        await wait_stats(http, gw, lambda s: instance_ids(s) == {"e1", "e2"})

        t = await send_user_traffic(http, gw, 60)
        assert t.failures == 0 and t.served == {"e1": 30, "e2": 30}, t
        status, doc = await post_json(http, f"{gw}/chat", {"content": "etcd"})
        assert (status, doc["content"], doc["served_by"]) == (200, "Echo: etcd", "ec1")

        # revoked at once, not expired: the key is gone as soon as the process has exited
        # (within terminate's 15 s; the 30 s lease, renewed about every 10 s until SIGTERM,
        # cannot expire within ~19 s of it), and the process logged no failed revoke
        assert await asyncio.to_thread(g.terminate, "e1", 15.0) == 0
        assert (await etcd_client.get(instance_key("user", "e1"))).count == 0
        log = g.log_text("e1")
        assert "deregistered /services/user/e1" in log, log[-2000:]
        assert "the key goes when lease" not in log, log[-2000:]
        await wait_stats(http, gw, lambda s: instance_ids(s) == {"e2"}, timeout=15)
        t = await send_user_traffic(http, gw, 20)
        assert t.failures == 0 and t.served == {"e2": 20}, t
        status, _ = await get_json(http, f"{gw}/user?id=1")
        assert status == 200
