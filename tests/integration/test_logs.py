"""Structured logs: the same fields in both formats; a node started with log_format = "json"
writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from raftreg.config import parse_config
from raftreg.errors import InvalidArgument
from raftreg.logfmt import JsonFormatter, TextFormatter
from raftreg.testing import ProcessCluster

FIELDS = {"ts", "level", "logger", "component", "msg"}


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("raftreg.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_and_text_carry_the_same_fields() -> None:
    doc = json.loads(JsonFormatter("node=n1").format(record(rpc_code="OK", rpc_duration_ms=1.5)))
    assert set(doc) >= FIELDS
    assert (doc["level"], doc["logger"], doc["component"], doc["msg"]) == (
        "WARNING", "raftreg.x", "node=n1", "hello you")
    assert doc["rpc_code"] == "OK" and doc["rpc_duration_ms"] == 1.5
    assert doc["ts"].endswith("Z")
    line = TextFormatter("node=n1").format(record(rpc_code="OK"))
    assert line.split(" ", 4)[1:4] == ["WARNING", "raftreg.x", "node=n1"]
    assert line.endswith("hello you rpc_code=OK")


@pytest.mark.slow
def test_a_node_logs_json_lines(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", size=1, log_format="json") as c:
        c.start()
        c.wait_leader()
        deadline = time.monotonic() + 10
        while "leading term" not in c.log_text("n1") and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [ln for ln in c.log_text("n1").splitlines() if ln.strip()]
    docs = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert docs and all(set(d) >= FIELDS and d["component"] == "node=n1" for d in docs)
    assert any("serving clients" in d["msg"] for d in docs)


def test_log_level_is_a_cluster_setting_checked_at_load(tmp_path: Path) -> None:
    base = {"cluster": {"name": "c", "secret": "x" * 32},
            "node": [{"name": "n1", "raft": "127.0.0.1:1", "client": "127.0.0.1:2"}]}
    assert parse_config(base).settings.log_level == "info"
    base["cluster"]["log_level"] = "warning"  # type: ignore[index]
    assert parse_config(base).settings.log_level == "warning"
    base["cluster"]["log_level"] = "verbose"  # type: ignore[index]
    with pytest.raises(InvalidArgument, match="log_level must be one of debug, info, warning"):
        parse_config(base)


@pytest.mark.slow
def test_a_node_at_warning_level_logs_no_info_lines(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", size=1, log_level="warning") as c:
        c.start()
        c.wait_leader()
        c.kill("n1")
        assert " INFO " not in c.log_text("n1")  # "serving clients", "leading term": info
