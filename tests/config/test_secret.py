"""The cluster secret: read from cluster.toml or a file of its own, refused when missing, short or
published, created with mode 0600 and never overwritten."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from raftreg.cli import run
from raftreg.config import (
    EXAMPLE_SECRETS,
    MIN_SECRET_BYTES,
    check_secret,
    dev_config,
    load_config,
    parse_config,
    write_secret_file,
)
from raftreg.errors import InvalidArgument

REPO = Path(__file__).resolve().parents[2]
NODE = {"name": "n1", "raft": "127.0.0.1:1", "client": "127.0.0.1:2"}


def _cfg(tmp_path: Path, **cluster: str) -> object:
    return parse_config({"cluster": cluster, "node": [NODE]}, tmp_path / "cluster.toml")


@pytest.mark.parametrize("bad", ["", "short", *sorted(EXAMPLE_SECRETS)])
def test_missing_short_and_example_secrets_are_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="raftreg secret FILE"):
        check_secret(bad)


def test_a_long_random_secret_is_accepted() -> None:
    check_secret("x" * MIN_SECRET_BYTES)
    check_secret(dev_config("/tmp/unused").settings.secret)


def test_secret_file_is_created_0600_once_and_read_relative_to_the_config(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.secret"
    assert write_secret_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert not write_secret_file(path) and path.read_text() == first  # never overwritten
    cfg = parse_config({"cluster": {"secret_file": "cluster.secret"}, "node": [NODE]},
                       tmp_path / "cluster.toml")
    assert cfg.cluster_secret() == first.strip()
    assert len(first.strip()) >= MIN_SECRET_BYTES
    other = tmp_path / "other.secret"
    assert write_secret_file(other) and other.read_text() != first  # random per file


def test_a_missing_secret_file_says_how_to_create_it(tmp_path: Path) -> None:
    cfg = parse_config({"cluster": {"secret_file": "nope.secret"}, "node": [NODE]},
                       tmp_path / "cluster.toml")
    with pytest.raises(InvalidArgument, match=r"nope\.secret does not exist.*raftreg secret"):
        cfg.cluster_secret()


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not both"):
        parse_config({"cluster": {"secret": "a" * 20, "secret_file": "s"}, "node": [NODE]})


def test_the_committed_cluster_toml_holds_no_usable_secret() -> None:
    cfg = load_config(REPO / "cluster.toml")
    assert cfg.settings.secret == "" and cfg.settings.secret_file == "cluster.secret"
    assert "cluster.secret" in (REPO / ".gitignore").read_text().split()


def test_the_cli_creates_a_secret_file(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "c.secret"
    assert run(["secret", str(path)], stdout=out, stderr=out) == 0
    assert "wrote a new cluster secret" in out.getvalue()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run(["secret", str(path)], stdout=out, stderr=out) == 0
    assert "exists" in out.getvalue()
