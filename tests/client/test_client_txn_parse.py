"""The etcdctl txn format parser and lease-id parsing of the CLI."""

from __future__ import annotations

import pytest

from raftreg.cli import parse_compare, parse_lease_id, parse_op, parse_txn, read_txn
from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    Put,
    Range,
    SortOrder,
    SortTarget,
    Txn,
)
from raftreg.errors import InvalidArgument

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('value("k") = "v"', Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b"v")),
        ('val("k") != "v w"', Compare(b"k", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"v w")),
        ('mod("k") > "5"', Compare(b"k", CompareTarget.MOD, CompareResult.GREATER, 5)),
        ('m("k") < "5"', Compare(b"k", CompareTarget.MOD, CompareResult.LESS, 5)),
        ('version("k") = "0"', Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, 0)),
        ('ver("k") == "2"', Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, 2)),
        ('create("/a/b") < "3"', Compare(b"/a/b", CompareTarget.CREATE, CompareResult.LESS, 3)),
        ('c("k")>"3"', Compare(b"k", CompareTarget.CREATE, CompareResult.GREATER, 3)),
        (
            'lease("k") = "694d77aa9e38260f"',
            Compare(b"k", CompareTarget.LEASE, CompareResult.EQUAL, 0x694D77AA9E38260F),
        ),
        ('value("k") = "a\\"b"', Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b'a"b')),
        ('value("k") = ""', Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b"")),
        ('mod("k") > 7', Compare(b"k", CompareTarget.MOD, CompareResult.GREATER, 7)),
    ],
)
def test_parse_compare(line: str, expected: Compare) -> None:
    assert parse_compare(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        'value(k) = "v"',
        'size("k") = "1"',
        'mod("k") >= "1"',
        'mod("k") = "x"',
        'value("k")',
        "put k v",
    ],
)
def test_parse_compare_rejects(line: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_compare(line)


def test_parse_op() -> None:
    assert parse_op("put k v") == Put(b"k", b"v")
    assert parse_op('put k "two words" --prev-kv') == Put(b"k", b"two words", prev_kv=True)
    assert parse_op("put k v --lease 0x10") == Put(b"k", b"v", lease=16)
    assert parse_op("get k") == Range(b"k")
    assert parse_op("get k --prefix --limit 2") == Range(b"k", b"l", limit=2)
    assert parse_op("get a c") == Range(b"a", b"c")
    assert parse_op("get a --from-key") == Range(b"a", b"\0")
    assert parse_op("get a --prefix --sort-by MODIFY") == Range(
        b"a", b"b", sort_order=SortOrder.ASCEND, sort_target=SortTarget.MOD
    )
    assert parse_op("del k") == DeleteRange(b"k")
    assert parse_op("del k --prefix --prev-kv") == DeleteRange(b"k", b"l", prev_kv=True)
    for bad in ("", "incr k", "put k", "get a b --prefix", "put 'unterminated", "get k --nope"):
        with pytest.raises(InvalidArgument):
            parse_op(bad)


def test_parse_txn_sections() -> None:
    text = (
        'mod("key1") > "0"\n'
        'value("key2") = "v"\n'
        "\n"
        'put key1 "overwrote-key1"\n'
        "get key1\n"
        "\n"
        'put key2 "some extra key"\n'
        "del key3\n"
    )
    assert parse_txn(text) == Txn(
        compare=(
            Compare(b"key1", CompareTarget.MOD, CompareResult.GREATER, 0),
            Compare(b"key2", CompareTarget.VALUE, CompareResult.EQUAL, b"v"),
        ),
        success=(Put(b"key1", b"overwrote-key1"), Range(b"key1")),
        failure=(Put(b"key2", b"some extra key"), DeleteRange(b"key3")),
    )


def test_parse_txn_empty_sections() -> None:
    assert parse_txn("") == Txn()
    assert parse_txn("\nput a 1\n") == Txn(success=(Put(b"a", b"1"),))
    assert parse_txn("\n\nput a 1\n") == Txn(failure=(Put(b"a", b"1"),))


def test_read_txn_stops_after_failure_section_and_prompts() -> None:
    lines = iter(["\n", "put a 1\n", "\n", "\n", "NOT READ\n"])
    prompts: list[str] = []
    assert read_txn(lines, prompts.append) == Txn(success=(Put(b"a", b"1"),))
    assert next(lines) == "NOT READ\n"
    assert prompts == [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ]


def test_parse_txn_reports_the_bad_line() -> None:
    with pytest.raises(InvalidArgument, match="frob"):
        parse_txn("\nput a 1\nfrob x\n")
    with pytest.raises(InvalidArgument, match="malformed comparison"):
        parse_txn("value(k) = v\n")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("694d77aa9e38260f", 0x694D77AA9E38260F),
        ("0x10", 16),
        ("0X1f", 31),
        ("10", 10),
        ("ff", 255),
        ("0", 0),
    ],
)
def test_parse_lease_id(text: str, value: int) -> None:
    assert parse_lease_id(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "-1", "0x", "ffffffffffffffff"])
def test_parse_lease_id_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_lease_id(text)
