"""CLI argument parsing and output formatting, against the in-memory registry
(`MemoryRegistryClient`, through `tests.cli_harness`); two small subclasses add what one
in-memory member cannot show (an unreachable member, one failing endpoint among two)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest

from raftreg import __version__
from raftreg.cli import (
    build_parser,
    format_table,
    result_json,
    run,
    running_dev,
    simple_lines,
)
from raftreg.client import MemoryRegistryClient
from raftreg.client.protocol import Member, NodeStatus
from raftreg.common.types import (
    DeleteResult,
    KeyValue,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnResult,
)
from raftreg.errors import FailedPrecondition, Unavailable
from raftreg.store.commands import LeaseGrant
from tests.cli_harness import CliHarness

pytestmark = pytest.mark.timeout(10)


class _OneMemberDown(MemoryRegistryClient):
    """Adds an unreachable second member: the memory registry is one member, always connected."""

    async def member_list(self) -> list[Member]:
        down = Member(0xAB, "n2", ("tcp://127.0.0.1:2382",), ("http://127.0.0.1:2381",),
                      is_leader=False, connected=False)
        return [*await super().member_list(), down]


class _SecondEndpointDown(MemoryRegistryClient):
    """Two endpoints, the second refusing `status`: a failure of one endpoint among several,
    which the one-endpoint memory registry (`set_unavailable`: all calls or none) cannot give."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        return ("127.0.0.1:2379", "127.0.0.1:9")

    async def status(self, endpoint: str | None = None, *, with_hash: bool = False) -> NodeStatus:
        if endpoint == "127.0.0.1:9":
            raise Unavailable("cannot connect to 127.0.0.1:9")
        return await super().status(endpoint)


ENDPOINT = ("--endpoints", "127.0.0.1:2379")


@pytest.fixture
def cli() -> CliHarness:
    return CliHarness(args=ENDPOINT, spy=True)


def test_parser_globals_before_and_after_subcommand() -> None:
    p = build_parser()
    ns = p.parse_args(["--endpoints", "a:1,b:2", "-w", "json", "get", "k"])
    assert (ns.endpoints, ns.write_out, ns.timeout, ns.key) == ("a:1,b:2", "json", 5.0, "k")
    ns = p.parse_args(["get", "k", "--prefix", "-w", "table", "--timeout", "2.5"])
    assert (ns.write_out, ns.timeout, ns.prefix, ns.endpoints) == ("table", 2.5, True, None)
    ns = p.parse_args(["-w", "json", "put", "k", "v", "--lease", "694d77aa9e38260f"])
    assert (ns.write_out, ns.lease) == ("json", 0x694D77AA9E38260F)
    ns = p.parse_args(["lease", "timetolive", "0x10", "--keys"])
    assert (ns.id, ns.keys) == (16, True)
    ns = p.parse_args(["node", "--config", "c.toml", "--name", "n1"])
    assert (ns.config, ns.name) == ("c.toml", "n1")
    ns = p.parse_args(["dev"])
    assert (ns.data_dir, ns.listen, ns.http) == ("default.raftreg", "127.0.0.1:2379",
                                             "127.0.0.1:2381")


def test_usage_errors_return_2(cli: CliHarness, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("get")[0] == 2
    assert cli("frobnicate")[0] == 2
    assert cli("get", "k", "--sort-by", "SIZE")[0] == 2
    assert cli("lease", "revoke", "xyz")[0] == 2
    assert run([], stderr=io.StringIO()) == 2
    assert cli.clients == []


def test_endpoints_default_and_flag(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    h = CliHarness()
    monkeypatch.chdir(tmp_path)
    assert run(["get", "k"], client_factory=h.factory, stdout=io.StringIO()) == 0
    assert h.factory_args[-1] == (["127.0.0.1:2379"], 5.0)
    (tmp_path / "cluster.toml").write_text(
        '[[node]]\nname = "n1"\nraft = "127.0.0.1:12380"\nclient = "127.0.0.1:12379"\n'
    )
    assert run(["get", "k", "--timeout", "1"], client_factory=h.factory, stdout=io.StringIO()) == 0
    assert h.factory_args[-1] == (["127.0.0.1:12379"], 1.0)
    args = ["--endpoints", "http://a:1, b:2", "get", "k"]
    assert run(args, client_factory=h.factory, stdout=io.StringIO()) == 0
    assert h.factory_args[-1] == (["a:1", "b:2"], 5.0)


def test_put_get_simple(cli: CliHarness) -> None:
    assert cli("put", "foo", "bar") == (0, "OK\n", "")
    assert cli.spied("put").await_args_list == [mock.call(b"foo", b"bar", lease=0, prev_kv=False)]
    assert cli("put", "foo", "baz", "--prev-kv") == (0, "OK\nfoo\nbar\n", "")
    cli("put", "fox", "1")
    assert cli("get", "foo") == (0, "foo\nbaz\n", "")
    assert cli("get", "fo", "--prefix") == (0, "foo\nbaz\nfox\n1\n", "")
    assert cli("get", "fo", "--prefix", "--keys-only") == (0, "foo\nfox\n", "")
    assert cli("get", "fo", "--prefix", "--print-value-only") == (0, "baz\n1\n", "")
    assert cli("get", "fo", "--prefix", "--count-only") == (0, "2\n", "")
    assert cli("get", "missing") == (0, "", "")


def test_get_options_reach_the_client(cli: CliHarness) -> None:
    for key in ("a", "b", "c"):
        cli("put", key, "1")
    cli("get", "a", "z", "--rev", "3", "--limit", "2", "--consistency", "s", "--sort-by", "modify")
    args, kw = cli.spied("get").await_args_list[-1]
    assert args == (b"a",)
    assert kw == {
        "range_end": b"z",
        "revision": 3,
        "limit": 2,
        "keys_only": False,
        "count_only": False,
        "serializable": True,
        "sort_order": SortOrder.ASCEND,
        "sort_target": SortTarget.MOD,
    }
    assert cli("get", "a", "z", "--rev", "3", "--limit", "2", "--sort-by", "modify") == (
        0, "a\n1\nb\n1\n", "")  # c is not there yet at revision 3
    cli("get", "a", "--from-key", "--order", "DESCEND")
    _, kw = cli.spied("get").await_args_list[-1]
    assert (kw["range_end"], kw["sort_order"], kw["sort_target"], kw["serializable"]) == (
        b"\0",
        SortOrder.DESCEND,
        SortTarget.KEY,
        False,
    )
    code, _, err = cli("get", "a", "z", "--prefix")
    assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1


def test_get_table_and_json(cli: CliHarness) -> None:
    cli("put", "k1", "v1")
    cli("put", "key2", "value2")
    code, out, _ = cli("get", "k", "--prefix", "-w", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split("|")[1:3] == [" KEY  ", " VALUE  "]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "| key2 | value2 |" in out
    code, out, _ = cli("get", "k1", "-w", "json")
    doc = json.loads(out)
    assert doc["header"]["revision"] == cli.store.revision
    assert doc["count"] == 1 and doc["more"] is False
    kv = doc["kvs"][0]
    assert base64.b64decode(kv["key"]) == b"k1" and base64.b64decode(kv["value"]) == b"v1"
    assert kv["version"] == 1 and kv["create_revision"] == kv["mod_revision"]


def test_del(cli: CliHarness) -> None:
    cli("put", "a1", "x")
    cli("put", "a2", "y")
    assert cli("del", "a1") == (0, "1\n", "")
    assert cli("del", "a", "--prefix", "--prev-kv") == (0, "1\na2\ny\n", "")
    assert cli("del", "nothing") == (0, "0\n", "")


def test_txn_from_stdin(cli: CliHarness) -> None:
    cli("put", "k", "v")
    text = 'value("k") = "v"\n\nput k w\nget k\n\nput k other\n'
    code, out, err = cli("txn", stdin=text)
    assert (code, err) == (0, "")
    assert out == "SUCCESS\n\nOK\n\nk\nw\n"
    (txn,), _ = cli.spied("txn").await_args_list[-1]
    assert txn.compare[0].operand == b"v"
    code, out, _ = cli("txn", "-w", "json", stdin="\nput x 1\n")
    doc = json.loads(out)
    assert doc["succeeded"] is True and "response_put" in doc["responses"][0]
    code, _, err = cli("txn", stdin="bogus(\n")
    assert code == 1 and err.startswith("Error: malformed comparison")


def test_leases(cli: CliHarness) -> None:
    code, out, err = cli("lease", "grant", "10")
    granted = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(10s\)\n", out)
    assert (code, err) == (0, "") and granted is not None
    lid = granted[1]
    assert cli("lease", "list") == (0, f"found 1 leases\n{lid}\n", "")
    cli("put", "b", "2", "--lease", lid)
    cli("put", "a", "1", "--lease", lid)
    code, out, _ = cli("lease", "timetolive", lid, "--keys")
    assert code == 0
    assert out == f"lease {lid} granted with TTL(10s), remaining(10s), attached keys([a b])\n"
    assert cli("lease", "revoke", lid) == (0, f"lease {lid} revoked\n", "")
    assert cli("lease", "timetolive", lid) == (0, f"lease {lid} already expired\n", "")
    assert cli("lease", "revoke", lid) == (1, "", "Error: lease not found\n")
    assert cli("put", "k", "v", "--lease", "0x10") == (1, "", "Error: lease not found\n")
    cli.apply(LeaseGrant(16, 30))
    assert cli("put", "k", "v", "--lease", "0x10") == (0, "OK\n", "")
    assert cli.spied("put").await_args_list[-1].kwargs["lease"] == 16
    assert cli.store.range(Range(b"k")).kvs[0].lease == 16


def test_compaction_and_member_list() -> None:
    cli = CliHarness(args=ENDPOINT, client_class=_OneMemberDown)
    for i in range(5):
        cli.put(f"k{i}", "v")
    assert cli("compaction", "5") == (0, "compacted revision 5\n", "")
    assert cli.store.compact_revision == 5
    code, out, _ = cli("member", "list")
    assert out.splitlines() == [
        "1, started, memory, , memory://127.0.0.1:2379, false, true",
        "ab, unreachable, n2, tcp://127.0.0.1:2382, http://127.0.0.1:2381, false, false",
    ]
    code, out, _ = cli("member", "list", "-w", "table")
    assert "| ID | STATUS" in out and "| ab | unreachable |" in out
    code, out, _ = cli("member", "list", "-w", "json")
    assert code == 0
    assert json.loads(out)["members"][1]["name"] == "n2"


def test_endpoint_status_and_health(cli: CliHarness) -> None:
    down = CliHarness(args=ENDPOINT, client_class=_SecondEndpointDown)
    code, out, err = down("--endpoints", "127.0.0.1:2379,127.0.0.1:9", "endpoint", "status")
    assert code == 1
    assert down.factory_args[-1] == (["127.0.0.1:2379", "127.0.0.1:9"], 5.0)
    assert out.startswith("127.0.0.1:2379, 1, memory, , 0 B, true,")
    assert err == (
        "Error: failed to get the status of endpoint 127.0.0.1:9: cannot connect to 127.0.0.1:9\n"
    )
    code, out, _ = cli("endpoint", "status", "-w", "json")
    assert code == 0 and json.loads(out)[0]["Status"]["name"] == "memory"
    code, out, err = cli("endpoint", "health")
    assert code == 0 and err == ""
    assert out.startswith("127.0.0.1:2379 is healthy: successfully committed proposal: took = ")
    # health builds one client per endpoint
    assert cli.factory_args[-1] == (["127.0.0.1:2379"], 5.0)


def test_registry_errors_are_one_line() -> None:
    h = CliHarness(args=ENDPOINT, unavailable=True)
    code, out, err = h("put", "k", "v")
    assert (code, out) == (1, "")
    assert err == "Error: memory registry is unavailable\n"
    with pytest.raises(FailedPrecondition, match="closed"):  # the command closed its client
        asyncio.run(h.last.get("k"))


def test_bad_timeout_and_endpoints(cli: CliHarness, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli("--timeout", "0", "get", "k")
    assert code == 2 and "must be positive" in capsys.readouterr().err  # bad usage
    code, _, err = cli("--endpoints", "nohostport", "get", "k")
    assert code == 1 and "not host:port" in err


def test_node_with_missing_config_is_a_clear_error(tmp_path: Any) -> None:
    err = io.StringIO()
    code = run(["node", "--config", str(tmp_path / "nope.toml"), "--name", "n1"], stderr=err)
    assert code == 1
    assert (
        err.getvalue().startswith("Error: configuration file") and err.getvalue().count("\n") == 1
    )


def test_format_table() -> None:
    t = format_table(("A", "LONGER"), [["xyz", 1], ["", "2"]])
    assert t.splitlines() == [
        "+-----+--------+",
        "| A   | LONGER |",
        "+-----+--------+",
        "| xyz | 1      |",
        "|     | 2      |",
        "+-----+--------+",
    ]
    assert format_table(("A",), []).count("\n") == 3


def test_simple_lines_and_json_of_results() -> None:
    kv = KeyValue(b"k", 2, 3, 2, b"v", 7)
    assert simple_lines(PutResult(3, kv)) == ["OK", "k", "v"]
    assert simple_lines(DeleteResult(4, 1, (kv,))) == ["1", "k", "v"]
    txn = TxnResult(5, False, (RangeResult(5, (kv,), False, 1), DeleteResult(5, 0)))
    assert simple_lines(txn) == ["FAILURE", "", "k", "v", "", "0"]
    doc = result_json(txn)
    assert doc["succeeded"] is False
    assert doc["responses"][0]["response_range"]["kvs"][0]["lease"] == 7
    assert doc["responses"][1]["response_delete_range"]["deleted"] == 0
    assert result_json(PutResult(3, kv))["prev_kv"]["key"] == base64.b64encode(b"k").decode()


def test_timeouts_take_etcdctls_forms_and_every_global_flag_has_a_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = build_parser().parse_args(["get", "k"])
    assert (ns.dial_timeout, ns.timeout, ns.config, ns.write_out) == (
        2.0, 5.0, "cluster.toml", "simple")
    monkeypatch.setenv("RAFTREG_DIAL_TIMEOUT", "500ms")
    monkeypatch.setenv("RAFTREG_COMMAND_TIMEOUT", "3s")
    monkeypatch.setenv("RAFTREG_CONFIG", "/etc/raftreg/cluster.toml")
    monkeypatch.setenv("RAFTREG_WRITE_OUT", "json")
    ns = build_parser().parse_args(["get", "k"])
    assert (ns.dial_timeout, ns.timeout, ns.config, ns.write_out) == (
        0.5, 3.0, "/etc/raftreg/cluster.toml", "json")
    ns = build_parser().parse_args(["--command-timeout", "1.5", "--dial-timeout", "1", "get",
                                    "k", "-w", "table"])  # flags win over the variables
    assert (ns.dial_timeout, ns.timeout, ns.write_out) == (1.0, 1.5, "table")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"raftreg {__version__}"


def test_an_unreachable_registry_fails_fast_with_a_hint_and_exit_3() -> None:
    with socket.socket() as s:  # a port nobody listens on (connection refused at once)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = io.StringIO()
    t0 = time.monotonic()
    code = run(["--endpoints", f"127.0.0.1:{port}", "--dial-timeout", "2", "get", "/x"],
               stderr=err)
    took = time.monotonic() - t0
    assert code == 3, err.getvalue()
    text = err.getvalue()
    assert f"127.0.0.1:{port}: connection refused" in text and "raftreg dev" in text
    assert "scripts/start-cluster.sh" in text and text.count("\n") == 1
    assert took < 2 * 2.0  # the dial timeout, with room; no request retries


def test_running_dev_is_found_by_its_marker_while_its_process_lives(tmp_path: Any) -> None:
    marker = tmp_path / "dev.json"
    assert running_dev(tmp_path) is None
    marker.write_text(json.dumps({"pid": os.getpid(), "client": "127.0.0.1:2399"}))
    assert running_dev(tmp_path) == "127.0.0.1:2399"
    marker.write_text(json.dumps({"pid": 2**22 + 12345, "client": "127.0.0.1:2399"}))
    assert running_dev(tmp_path) is None  # stale: that process is gone
    marker.write_text("not json")
    assert running_dev(tmp_path) is None


def test_every_argument_of_every_command_has_help_text() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            elif not a.help and a.dest != "help":
                missing.append(f"{path}: {a.option_strings or a.dest}")

    walk(build_parser(), "raftreg")
    assert missing == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_only_on_a_terminal() -> None:
    from raftreg.cli.output import _Ctx
    from raftreg.cli.snapshot import _progress_line

    def ctx(err: io.StringIO) -> _Ctx:
        return _Ctx(fmt="simple", endpoints=[], timeout=1.0, factory=_no_client,
                    out=io.StringIO(), err=err, stdin=io.StringIO())

    term = _Terminal()
    show = _progress_line(ctx(term), "received")
    show(2**20, 4 * 2**20)
    show(4 * 2**20, 4 * 2**20)
    show(-1, -1)
    assert term.getvalue() == "\rreceived 1.0 of 4.0 MiB\rreceived 4.0 of 4.0 MiB\n"
    piped = io.StringIO()  # a pipe or a file: nothing, so logs stay clean
    show = _progress_line(ctx(piped), "received")
    show(1, 2)
    show(-1, -1)
    assert piped.getvalue() == ""


def _no_client(endpoints: Sequence[str], timeout: float) -> Any:
    raise AssertionError("no client expected")
