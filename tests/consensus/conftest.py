"""Fixtures of the consensus tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consensus.follower_harness import Follower


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Follower]:
    fol = Follower(tmp_path)
    yield fol
    fol.fsm._SyncObj__transport.destroy()
    fol.fsm._poller = None
    if fol.journal._fd >= 0:
        os.close(fol.journal._fd)
