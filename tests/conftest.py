"""Shared fixtures: real node processes on loopback, stopped by the fixture that started them;
and the rule that a test which starts a process is marked `slow`."""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftreg.testing import ProcessCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    """A fresh three-node cluster with an elected leader."""
    with ProcessCluster(tmp_path / "cluster") as c:
        c.start()
        c.wait_leader()
        yield c


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """One three-node cluster for a module's read-mostly tests (tests must use own keys)."""
    with ProcessCluster(tmp_path_factory.mktemp("shared") / "cluster") as c:
        c.start()
        c.wait_leader()
        yield c


# --- the `slow` mark is enforced ---------------------------------------------------------------
# Every test that starts a process (a node, an etcd, a service, a CLI in a subprocess) is marked
# `slow`, so `pytest -m "not slow"` is the quick loop. A test without the mark that starts one,
# in its set-up (fixtures included) or its body, fails and says why.

_real_popen_init = subprocess.Popen.__init__


def _refusing_popen_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    pytest.fail("this test starts a process but is not marked `slow` (pytest.mark.slow)",
                pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard_processes(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard_processes(item))


def _guard_processes(item: pytest.Item) -> Generator[None, None, None]:
    if item.get_closest_marker("slow") is not None:
        return (yield)
    subprocess.Popen.__init__ = _refusing_popen_init  # type: ignore[method-assign]
    try:
        return (yield)
    finally:
        subprocess.Popen.__init__ = _real_popen_init  # type: ignore[method-assign]
