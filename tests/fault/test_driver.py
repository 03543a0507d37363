"""The schedule driver's bookkeeping, without a cluster: a node that exits by itself between
steps is reported even when a later heal restarts it; nodes the driver stopped are not."""

from __future__ import annotations

import random
from typing import Any

from raftreg.testing.faults import Schedule, Step, _Driver


class _Proc:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class _FakeCluster:
    def __init__(self) -> None:
        self.names = ["n1", "n2", "n3"]
        self.paused: set[str] = set()
        self.procs: dict[str, Any] = {n: _Proc() for n in self.names}

    def alive(self, name: str) -> bool:
        return self.procs[name].returncode is None

    def leader(self) -> str | None:
        return "n1"

    def kill(self, name: str) -> None:
        self.procs[name].returncode = -9

    def start(self, *names: str) -> None:
        for n in names or self.names:
            if not self.alive(n):
                self.procs[n] = _Proc()

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def heal(self) -> None:
        self.start()

    def log_text(self, name: str) -> str:
        return f"{name}: journal refused to open"


def test_exits_by_themselves_are_reported_once_and_kills_are_not() -> None:
    c = _FakeCluster()
    d = _Driver(c, random.Random(1))  # type: ignore[arg-type]
    d.apply(Step("kill", "n2"))
    assert d.exits() == []
    c.procs["n3"].returncode = 1  # crashed by itself
    found = d.exits()
    assert len(found) == 1 and found[0].startswith("n3 exited by itself (code 1)")
    assert "journal refused to open" in found[0]
    assert d.exits() == []  # once
    d.apply(Step("heal"))
    assert c.alive("n3") and d.exits() == []
    d.apply(Step("kill_all"))
    assert d.exits() == []
    d.after_hold(Step("kill_all"))
    c.procs["n1"].returncode = -11
    assert [v[:2] for v in d.exits()] == ["n1"]


def test_power_cut_steps_round_trip_and_need_power_cut_disks() -> None:
    s = Schedule(5, (Step("power_cut", "leader", value=1.0), Step("power_cut_all")),
                 no_sync="n2")
    assert Schedule.from_json(s.to_json()) == s
    assert s.power_cuts and "torn" in str(s) and "no_sync=n2" in str(s)
    assert not Schedule(6, (Step("kill", "n1"),)).power_cuts
    d = _Driver(_FakeCluster(), random.Random(1))  # type: ignore[arg-type]
    try:
        d.apply(Step("power_cut", "n1"))
    except ValueError as e:
        assert "power-cut file system" in str(e)
    else:
        raise AssertionError("a power cut needs a cluster on the power-cut file system")


def test_two_leaders_in_one_term_is_a_violation() -> None:
    from raftreg.testing.faults import _LeaderPoller

    p = _LeaderPoller(_FakeCluster())  # type: ignore[arg-type]
    p.claims = {3: {"n1"}, 4: {"n2", "n3"}, 5: {"n2"}}
    assert p.violations() == ["two leaders in term 4: n2, n3 (each said it led)"]
