"""Shared fixtures: real node processes on loopback, stopped by the fixture that started them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
