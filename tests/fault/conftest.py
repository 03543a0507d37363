"""Fault-test fixtures: a three-node cluster running the fault-injection transport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from raftreg.testing import ProcessCluster


@pytest.fixture
def fcluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path / "cluster", faults=True, auto_compact_retain=0) as c:
        c.start()
        c.wait_leader()
        yield c
