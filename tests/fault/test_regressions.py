"""Saved schedules replayed: every bug the fault tests found keeps its schedule (with its seed)
here, and the deliberately broken node keeps one that must keep failing.

Each tests/fault/regressions/*.json holds {"schedule": {...}, "expect": ..., "why": "..."}; the
schedule is replayed on a fresh cluster. "expect" is "ok" (a fixed bug: must pass) or
"violation" (the deliberately broken node: must fail). Every case can fail: an open bug is
fixed before its seed lands here, not parked as an expected failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftreg.testing.faults import Schedule, run_schedule

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CASES = sorted((Path(__file__).parent / "regressions").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_replay(path: Path, tmp_path: Path) -> None:
    doc = json.loads(path.read_text())
    schedule = Schedule.from_json(doc["schedule"])
    res = run_schedule(schedule, tmp_path / "cluster")
    expect = doc.get("expect", "ok")
    assert expect in ("ok", "violation"), f"{path.name}: unknown expect {expect!r}"
    if expect == "violation":
        assert not res.ok, f"{path.name}: expected a violation ({doc.get('why')})"
    else:
        assert res.ok, f"{path.name} ({doc.get('why')}):\n{res.summary()}"
