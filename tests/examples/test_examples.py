"""Every file in examples/ runs as written against a real cluster, and the README shows each
one verbatim (so the README's Python snippets are code that runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftreg.testing import ProcessCluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
EXPECTED = {  # what each example prints, line by line (prefixes)
    "kv.py": ["2 [('/config/user/timeout_ms', '250')]"],
    "register_and_discover.py": ["registered /services/user/127.0.0.1:50051",
                                 "discovered [('127.0.0.1:50051', '127.0.0.1:50051', 2)]",
                                 "after stop 0"],
    "sync_service.py": ["discovered ['127.0.0.1:8081']",
                        "changed [('/config/orders/retries', '3')]",
                        "registered afterwards: 0"],
}


def test_every_example_is_in_the_readme_verbatim_and_has_expectations() -> None:
    readme = (REPO / "README.md").read_text()
    assert {p.name for p in EXAMPLES} == set(EXPECTED)
    for path in EXAMPLES:
        assert path.read_text() in readme, f"README does not show {path.name} as it is"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ProcessCluster(tmp_path_factory.mktemp("examples") / "cluster") as c:
        c.start()
        c.wait_leader()
        yield ",".join(c.endpoints)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_written(path: Path, endpoints: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTREG_")}
    env.update(RAFTREG_ENDPOINTS=endpoints, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(path)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    expected = EXPECTED[path.name]
    if path.name == "kv.py":  # the revision depends on what ran before on the cluster
        assert lines[0].split(" ", 1)[1] == expected[0].split(" ", 1)[1], lines
    else:
        assert lines == expected
