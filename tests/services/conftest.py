"""Fixtures for the example services, as real processes against a real registry.

- `registry_cluster` / `registry_url`: one three-node raftreg `ProcessCluster` per module, and
  the URL services take as `--registry` ("raftreg://host:port,...").
- `fleet`: one set of processes per module for read-mostly tests: users u1, u2, u3 (weights 1,
  2, 3, service `user`), chat c1 (service `chat`), gateway g1 (weighted_round_robin). Tests
  that change the fleet's state restore it.
- `group`: a `ServiceGroup` of the test's own (killed at the end of the test). Tests that
  kill, stop or reconfigure processes use it, with service names of their own
  (`--service user-<something>`) so they never disturb `fleet`.
- `http`: an aiohttp session (its timeout well above `GATEWAY_DEADLINE_MS`); `registry`: a
  `RegistryClient` of `registry_url`.
- `GENEROUS_DEADLINE`: the gateway arguments every test that is not about deadlines passes, so a
  scheduling stall of the (shared, possibly busy) machine never turns an answer into a 504.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from raftreg.client import RegistryClient, connect
from raftreg.testing import ProcessCluster
from services.testing import ServiceGroup, ServiceProc

USER_WEIGHTS = {"u1": 1, "u2": 2, "u3": 3}

# The gateway's default deadline (1 s per request, retries included) is a production setting: a
# test that counts failures must not depend on every request finishing within it.
GATEWAY_DEADLINE_MS = 10_000
GENEROUS_DEADLINE = ("--deadline-ms", str(GATEWAY_DEADLINE_MS))
HTTP_TIMEOUT_S = 3 * GATEWAY_DEADLINE_MS / 1000


@dataclass(frozen=True)
class Fleet:
    group: ServiceGroup
    users: dict[str, ServiceProc]
    chat: ServiceProc
    gateway: ServiceProc

    @property
    def gateway_url(self) -> str:
        return self.gateway.http_url


@pytest.fixture(scope="module")
def registry_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("services-registry") / "cluster") as c:
        c.start()
        c.wait_leader()
        yield c


@pytest.fixture(scope="module")
def registry_url(registry_cluster: ProcessCluster) -> str:
    return "raftreg://" + ",".join(registry_cluster.endpoints)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, registry_url: str) -> Iterator[Fleet]:
    with ServiceGroup(tmp_path_factory.mktemp("fleet"), registry_url) as g:
        specs: list[tuple[str, str, list[str]]] = [
            ("user", uid, ["--weight", str(w)]) for uid, w in USER_WEIGHTS.items()
        ]
        specs += [
            ("chat", "c1", []),
            ("gateway", "g1", ["--policy", "weighted_round_robin", *GENEROUS_DEADLINE]),
        ]
        procs = {p.id: p for p in g.start_many(specs)}
        yield Fleet(
            group=g,
            users={uid: procs[uid] for uid in USER_WEIGHTS},
            chat=procs["c1"],
            gateway=procs["g1"],
        )


@pytest.fixture
def group(tmp_path: Path, registry_url: str) -> Iterator[ServiceGroup]:
    with ServiceGroup(tmp_path / "services", registry_url) as g:
        yield g


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as s:
        yield s


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[RegistryClient]:
    client = connect(registry_url, timeout=3.0)
    try:
        yield client
    finally:
        await client.close()
