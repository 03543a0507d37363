"""Fault injection is not a setting: no cluster.toml can turn it on. Only the test launcher
(`python -m raftreg.testing.node`, the daemon's arguments plus a required `--fault-file`) runs a
node with it; the fault tests themselves (tests/fault) prove that the launched node works."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftreg.config import parse_config
from raftreg.errors import InvalidArgument
from raftreg.testing import node as launcher
from tests.config.test_secret import NODE


def test_fault_file_is_an_unknown_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown setting.*fault_file"):
        parse_config({"cluster": {"fault_file": "faults.json"}, "node": [NODE]},
                     tmp_path / "cluster.toml")


def test_launcher_requires_a_fault_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        launcher.main(["--config", "cluster.toml", "--name", "n1"])
    assert "--fault-file" in capsys.readouterr().err


def test_launcher_refuses_a_bad_configuration_as_the_daemon_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert launcher.main(["--config", str(missing), "--name", "n1", "--fault-file", "f"]) == 1
    assert capsys.readouterr().err.startswith("Error: ")
