"""`raftreg config ...` and `raftreg services ...` over the in-memory client: argument parsing and
the three output formats. Long-running commands get a script task on the command's own loop
that writes and finally "presses Ctrl-C" by cancelling the command's task (what asyncio.run does
on SIGINT)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from raftreg.cli import parse_setting, parse_setting_value
from raftreg.client import MemoryRegistryClient
from raftreg.discovery.instance import Instance, encode_instance
from raftreg.store.commands import Compact
from tests.cli_harness import CliHarness

pytestmark = pytest.mark.timeout(20)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


@pytest.fixture
def cli() -> CliHarness:
    return CliHarness()


def test_setting_values_are_json_or_else_strings() -> None:
    assert parse_setting("ratelimit.rps=100") == ("ratelimit.rps", 100)
    assert parse_setting("a.b/c=x=y") == ("a.b/c", "x=y")
    cases: list[tuple[str, Any]] = [
        ("2.5", 2.5), ("true", True), ("null", None), ('"42"', "42"), ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}), ("round_robin", "round_robin"), ("", ""), ("NaN", "NaN"),
        ("hello world", "hello world"),
    ]
    for text, value in cases:
        assert parse_setting_value(text) == value, text
    from raftreg.errors import InvalidArgument

    for meant_as_json in ("[1, 2", '{"a": }', '"open'):
        with pytest.raises(InvalidArgument, match="not valid JSON"):
            parse_setting_value(meant_as_json)
    for bad in ("novalue", "=1"):
        with pytest.raises(InvalidArgument, match="NAME=VALUE"):
            parse_setting(bad)


def test_config_set_and_get_in_every_format(cli: CliHarness) -> None:
    code, out, err = cli("config", "set", "gw", "ratelimit.rps=100", "balancer.policy=weighted",
                         "hosts=[\"a\",\"b\"]", "old=1")
    assert (code, err) == (0, "")
    assert out == "published revision 2\n"
    assert cli("config", "set", "gw", "ratelimit.rps=50", "--delete", "old", "-w", "json") == (
        0, '{"header": {"revision": 3}, "service": "gw"}\n', "")
    assert cli("config", "get", "gw") == (
        0, 'balancer.policy="weighted"\nhosts=["a","b"]\nratelimit.rps=50\n', "")
    assert cli("config", "get", "gw", "ratelimit.rps") == (0, "50\n", "")
    assert cli("config", "get", "gw", "ratelimit.rps", "--rev", "2") == (0, "100\n", "")
    code, out, _ = cli("config", "get", "gw", "-w", "json")
    assert json.loads(out) == {
        "header": {"revision": 3}, "service": "gw", "invalid": {},
        "config": {"balancer.policy": "weighted", "hosts": ["a", "b"], "ratelimit.rps": 50},
    }
    code, out, _ = cli("config", "get", "gw", "-w", "table")
    lines = out.splitlines()
    assert [c.strip() for c in lines[1].split("|")[1:5]] == ["NAME", "VALUE", "MOD_REV",
                                                             "VERSION"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "| ratelimit.rps   | 50         | 3       | 2       |" in lines
    assert cli("config", "get", "gw", "missing") == (
        1, "", "Error: gw has no setting 'missing'\n")


def test_config_set_refusals(cli: CliHarness) -> None:
    assert cli("config", "set", "gw")[0:3:2] == (1, "Error: nothing to publish\n")
    code, _, err = cli("config", "set", "gw", "a=1", "--delete", "a")
    assert code == 1 and err == "Error: setting 'a' given twice\n"
    code, _, err = cli("config", "set", "gw", "a=[1,")
    assert code == 1 and "not valid JSON" in err
    code, _, err = cli("config", "set", "bad/service", "a=1")
    assert code == 1 and err.startswith("Error: service 'bad/service' must be")
    assert cli("config", "set", "gw", "a=1")[1] == "published revision 2\n"
    assert cli("config", "set", "gw", "a=2", "--expect-rev", "2")[1] == "published revision 3\n"
    code, _, err = cli("config", "set", "gw", "a=3", "--expect-rev", "2")
    assert (code, err) == (1, "Error: config of gw changed after revision 2\n")
    assert cli("config", "get", "gw", "a") == (0, "2\n", "")


def test_a_stored_value_that_is_not_json_is_a_warning(cli: CliHarness) -> None:
    cli("config", "set", "gw", "a=1")
    cli.put("/config/gw/b", "{broken")
    code, out, err = cli("config", "get", "gw")
    assert (code, out) == (0, "a=1\n")
    assert err.startswith("Warning: gw setting 'b': value is not JSON (")
    code, out, err = cli("config", "get", "gw", "-w", "json")
    doc = json.loads(out)
    assert doc["config"] == {"a": 1} and doc["invalid"]["b"]["raw"] == "{broken"
    code, out, _ = cli("config", "get", "gw", "-w", "table")
    assert "| b    | {broken |" in out
    code, out, err = cli("config", "get", "gw", "b")
    assert code == 1 and out == "" and err.startswith("Error: gw setting 'b': value is not JSON")


def test_history_and_rollback(cli: CliHarness) -> None:
    cli("config", "set", "gw", "a=1", "b=x")
    cli("config", "set", "gw", "a=2", "--delete", "b")
    cli.put("/config/gw/c", "{broken")
    code, out, err = cli("config", "history", "gw")
    assert code == 0
    assert out.splitlines() == ['2 SET a=1', '2 SET b="x"', "3 SET a=2", "3 DELETE b",
                                "4 SET c={broken"]
    assert err.startswith("Warning: gw revision 4: c: value is not JSON")
    assert cli("config", "history", "gw", "b")[1].splitlines() == ['2 SET b="x"', "3 DELETE b"]
    code, out, _ = cli("config", "history", "gw", "-w", "table")
    assert "| 3        | DELETE | b    |         |" in out.splitlines()
    code, out, _ = cli("config", "history", "gw", "-w", "json")
    doc = json.loads(out)
    assert (doc["header"]["revision"], doc["oldest_revision"], doc["compacted"]) == (4, 1, False)
    assert doc["versions"][1] == {"service": "gw", "revision": 3, "puts": {"a": 2},
                                  "deletes": ["b"], "invalid": {}}
    assert doc["versions"][2]["invalid"]["c"]["raw"] == "{broken"

    assert cli("config", "rollback", "gw", "--rev", "2") == (
        0, "rolled back gw to revision 2: published revision 5\n", "")
    assert cli("config", "get", "gw") == (0, 'a=1\nb="x"\n', "")
    code, out, _ = cli("config", "rollback", "gw", "--rev", "3", "-w", "json")
    assert json.loads(out) == {"header": {"revision": 6}, "service": "gw", "rolled_back_to": 3}
    assert cli("config", "rollback", "gw")[0] == 2  # --rev is required
    code, _, err = cli("config", "rollback", "gw", "--rev", "60")
    assert code == 1 and "future revision" in err

    cli.apply(Compact(4))
    code, out, err = cli("config", "history", "gw")
    assert code == 0 and out.splitlines()[0] == "4 SET c={broken"
    assert "Note: history of gw before revision 4 has been compacted\n" in err
    code, _, err = cli("config", "rollback", "gw", "--rev", "2")
    assert code == 1 and "compacted" in err


def test_config_watch_prints_changes_until_ctrl_c(cli: CliHarness) -> None:
    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: m.watch_count == 1)
        await m.put("/config/gw/a", "1")
        await m.put("/config/gwx/a", "1")  # another service
        await m.put("/config/gw/b", "oops")
        await m.delete("/config/gw/a")
        await until(lambda: out.getvalue().count("\n") >= 3)
        main.cancel()  # Ctrl-C

    code, out, err = cli("config", "watch", "gw", script=script)
    assert code == 0
    assert out.splitlines() == ["2 SET a=1", "4 SET b=oops", "5 DELETE a"]
    assert err.startswith("Warning: gw revision 4: b: value is not JSON")

    async def stop(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: out.getvalue().count("\n") >= 2)
        main.cancel()

    code, out, _ = cli("config", "watch", "gw", "--rev", "2", "-w", "json", script=stop)
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0] == {"service": "gw", "revision": 2, "puts": {"a": 1}, "deletes": [],
                       "invalid": {}}
    assert docs[1]["invalid"]["b"]["raw"] == "oops"
    cli.apply(Compact(4))
    code, _, err = cli("config", "watch", "gw", "--rev", "2")
    assert code == 1 and "compact revision 4" in err


def _instance(service: str, iid: str, **kw: Any) -> bytes:
    return encode_instance(Instance(service, iid, kw.pop("address", "10.0.0.1:80"), **kw))


def test_services_list_shows_instances_and_warns_about_malformed_ones(cli: CliHarness) -> None:
    now = time.time()
    cli.put("/services/user/i1", _instance("user", "i1", weight=3, zone="z1", version="v1",
                                           registered_at=now - 125))
    cli.put("/services/user/i2", _instance("user", "i2", address="10.0.0.2:80"))
    cli.put("/services/user/bad", b'{"address": "nope"}')
    cli.put("/services/order/o1", _instance("order", "o1", registered_at=now - 3))
    cli.put("/services/stray", b"x")
    code, out, err = cli("services", "list")
    assert code == 0
    assert out.splitlines() == [
        "order, o1, 10.0.0.1:80, 1, , , 3s, -, -, ",
        "user, i1, 10.0.0.1:80, 3, z1, v1, 2m5s, -, -, ",
        "user, i2, 10.0.0.2:80, 1, , , -, -, -, ",
    ]
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("Warning: skipping malformed registration")
                                      for w in warnings)
    assert "/services/user/bad" in err and "/services/stray" in err
    code, out, err = cli("services", "list", "user", "-w", "table")
    assert out.splitlines()[1] == (
        "| SERVICE | ID | ADDRESS     | WEIGHT | ZONE | VERSION | AGE  | LEASE | TTL | METADATA |")
    assert len(out.splitlines()) == 6 and "bad" in err
    code, out, _ = cli("services", "list", "order", "-w", "json")
    (inst,) = json.loads(out)["instances"]
    assert inst["service"] == "order" and inst["id"] == "o1" and inst["lease"] == 0
    assert inst["ttl"] is None and inst["granted_ttl"] is None
    assert inst["addr"] == "10.0.0.1:80" and inst["weight"] == 1 and inst["name"] == "order"
    assert cli("services", "list", "nobody") == (0, "", "")
    code, _, err = cli("services", "list", "a/b")
    assert code == 1 and err.startswith("Error: service 'a/b'")


def test_services_watch_prints_added_updated_removed_until_ctrl_c(cli: CliHarness) -> None:
    cli.put("/services/user/i1", _instance("user", "i1"))

    async def script(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: m.watch_count == 1)
        await m.put("/services/user/i2", _instance("user", "i2", zone="z"))
        await m.put("/services/user/i2", _instance("user", "i2", zone="z"))  # no change
        await m.put("/services/user/i1", _instance("user", "i1", weight=5))
        await m.put("/services/order/o1", _instance("order", "o1"))  # another service
        await m.put("/services/user/i2", b"garbage")
        await m.delete("/services/user/i1")
        await until(lambda: out.getvalue().count("\n") >= 5)
        main.cancel()

    code, out, err = cli("services", "watch", "user", script=script)
    assert code == 0
    assert out.splitlines() == [
        "ADDED user/i1 10.0.0.1:80 weight=1 zone= version=",
        "ADDED user/i2 10.0.0.1:80 weight=1 zone=z version=",
        "UPDATED user/i1 10.0.0.1:80 weight=5 zone= version=",
        "REMOVED user/i2 10.0.0.1:80 weight=1 zone=z version=",
        "REMOVED user/i1 10.0.0.1:80 weight=5 zone= version=",
    ]
    assert err.startswith("Warning: skipping malformed registration /services/user/i2: ")

    async def stop(m: MemoryRegistryClient, main: asyncio.Task[object], out: io.StringIO) -> None:
        await until(lambda: m.watch_count == 1)
        await m.put("/services/order/o2", _instance("order", "o2"))
        await until(lambda: out.getvalue().count("\n") >= 2)
        main.cancel()

    code, out, _ = cli("services", "watch", "-w", "json", script=stop)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["type"], d["instance"]["id"]) for d in docs] == [("ADDED", "o1"), ("ADDED", "o2")]
    assert docs[1]["revision"] > docs[0]["revision"]
