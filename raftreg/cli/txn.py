"""The request grammar: the arguments of `put`, `get` and `del`, shared by those commands,
`watch` and the request lines of `txn`, and etcdctl's txn format (`parse_compare`, `parse_op`,
`read_txn`, `parse_txn`) with its lease ids (`parse_lease_id`). One grammar for the command
line and for txn lines, so a request reads the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator
from typing import NoReturn

from raftreg.common.keys import prefix_range_end
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

_SORT_TARGETS = {
    "KEY": SortTarget.KEY,
    "VERSION": SortTarget.VERSION,
    "CREATE": SortTarget.CREATE,
    "MODIFY": SortTarget.MOD,
    "VALUE": SortTarget.VALUE,
}


def parse_lease_id(text: str) -> int:
    """A lease id: "0x..." is hex, all digits is decimal, anything else is hex (etcdctl prints
    ids as 16 hex digits)."""
    s = text.strip().lower()
    try:
        if s.startswith("0x"):
            value = int(s[2:], 16)
        elif s.isdigit():
            value = int(s, 10)
        else:
            value = int(s, 16)
    except ValueError:
        raise InvalidArgument(f"bad lease id {text!r}") from None
    if not 0 <= value < 1 << 63:
        raise InvalidArgument(f"lease id {text!r} out of range")
    return value


def _key_arg(text: str) -> bytes:
    # argv arrives surrogate-escaped on POSIX: fsencode recovers the exact bytes typed.
    return os.fsencode(text)


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser that raises `InvalidArgument` instead of exiting (for txn lines)."""

    def error(self, message: str) -> NoReturn:
        raise InvalidArgument(message)


def _add_put_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="the key")
    p.add_argument("value", help="the value (as given; use quotes for spaces or JSON)")
    p.add_argument("--prev-kv", action="store_true", help="return the previous key-value")
    p.add_argument("--lease", type=parse_lease_id, default=0, help="lease id (hex or decimal)")


def _add_range_args(p: argparse.ArgumentParser, *, reads: bool) -> None:
    p.add_argument("key", help="the key, or the start of the range")
    p.add_argument("range_end", nargs="?", default=None,
                   help="end of the range [KEY, RANGE_END), exclusive")
    p.add_argument("--prefix", action="store_true", help="every key with this prefix")
    p.add_argument("--from-key", action="store_true", help="every key >= KEY")
    if not reads:
        p.add_argument("--prev-kv", action="store_true", help="return the deleted key-values")
        return
    p.add_argument("--rev", type=int, default=0, help="read at this revision")
    p.add_argument("--limit", type=int, default=0, help="at most this many keys")
    p.add_argument("--keys-only", action="store_true", help="keys without values")
    p.add_argument("--count-only", action="store_true", help="only how many keys match")
    p.add_argument("--print-value-only", action="store_true",
                   help="values only (simple output)")
    p.add_argument(
        "--consistency", choices=("l", "s"), default="l", help="l: linearizable, s: serializable"
    )
    p.add_argument("--sort-by", type=str.upper, choices=tuple(_SORT_TARGETS), default=None,
                   help="sort target (ascending unless --order)")
    p.add_argument("--order", type=str.upper, choices=("ASCEND", "DESCEND"), default=None,
                   help="sort order (by key unless --sort-by)")


def _range_bounds(ns: argparse.Namespace) -> tuple[bytes, bytes]:
    key = _key_arg(ns.key)
    given = [ns.range_end is not None, ns.prefix, ns.from_key]
    if sum(given) > 1:
        raise InvalidArgument("use only one of RANGE_END, --prefix and --from-key")
    if ns.prefix:
        return key, prefix_range_end(key)
    if ns.from_key:
        return key, b"\0"
    return key, _key_arg(ns.range_end) if ns.range_end is not None else b""


def _range_op(ns: argparse.Namespace) -> Range:
    key, end = _range_bounds(ns)
    order = SortOrder[ns.order] if ns.order else SortOrder.NONE
    if ns.sort_by and order is SortOrder.NONE:
        order = SortOrder.ASCEND
    target = _SORT_TARGETS[ns.sort_by] if ns.sort_by else SortTarget.KEY
    return Range(key, end, ns.rev, ns.limit, order, target, ns.keys_only, ns.count_only)


def _put_op(ns: argparse.Namespace) -> Put:
    return Put(_key_arg(ns.key), _key_arg(ns.value), ns.lease, ns.prev_kv)


def _delete_op(ns: argparse.Namespace) -> DeleteRange:
    key, end = _range_bounds(ns)
    return DeleteRange(key, end, ns.prev_kv)


def _op_parser() -> _RaisingParser:
    p = _RaisingParser(prog="txn", add_help=False)
    sub = p.add_subparsers(dest="op", required=True, parser_class=_RaisingParser)
    _add_put_args(sub.add_parser("put", add_help=False))
    _add_range_args(sub.add_parser("get", add_help=False), reads=True)
    _add_range_args(sub.add_parser("del", add_help=False), reads=False)
    return p


def parse_op(line: str, parser: _RaisingParser | None = None) -> Range | Put | DeleteRange:
    """One txn request line: `put KEY VALUE [--lease ID]`, `get KEY [RANGE_END] [flags]` or
    `del KEY [RANGE_END] [--prefix] [--prev-kv]` (shell-style quoting)."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise InvalidArgument(f"bad request {line!r}: {e}") from None
    try:
        ns = (parser or _op_parser()).parse_args(words)
    except InvalidArgument as e:
        raise InvalidArgument(f"bad request {line!r}: {e}") from None
    if ns.op == "put":
        return _put_op(ns)
    if ns.op == "get":
        return _range_op(ns)
    return _delete_op(ns)


_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMPARE_RE = re.compile(
    rf"^\s*(\w+)\s*\(\s*{_QUOTED}\s*\)\s*(==|=|!=|<|>)\s*(?:{_QUOTED}|(\S+))\s*$"
)
_COMPARE_TARGETS = {
    "ver": CompareTarget.VERSION,
    "version": CompareTarget.VERSION,
    "c": CompareTarget.CREATE,
    "create": CompareTarget.CREATE,
    "m": CompareTarget.MOD,
    "mod": CompareTarget.MOD,
    "val": CompareTarget.VALUE,
    "value": CompareTarget.VALUE,
    "lease": CompareTarget.LEASE,
}
_COMPARE_OPS = {
    "=": CompareResult.EQUAL,
    "==": CompareResult.EQUAL,
    "!=": CompareResult.NOT_EQUAL,
    "<": CompareResult.LESS,
    ">": CompareResult.GREATER,
}


def _unquote(s: str) -> str:
    try:
        out = json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s
    return out if isinstance(out, str) else s


def parse_compare(line: str) -> Compare:
    """One etcdctl compare line, e.g. `value("k") = "v"`, `mod("k") > "5"`,
    `version("k") = "0"`, `create("k") < "3"`, `lease("k") = "694d77aa9e38260f"`."""
    m = _COMPARE_RE.match(line)
    if m is None:
        raise InvalidArgument(f"malformed comparison: {line}")
    name, key, op, quoted, bare = m.groups()
    target = _COMPARE_TARGETS.get(name.lower())
    if target is None:
        raise InvalidArgument(f"malformed comparison: {line} (unknown target {name!r})")
    raw = _unquote(quoted) if quoted is not None else bare
    operand: bytes | int
    if target is CompareTarget.VALUE:
        operand = os.fsencode(raw)
    elif target is CompareTarget.LEASE:
        operand = parse_lease_id(raw)
    else:
        try:
            operand = int(raw, 10)
        except ValueError:
            raise InvalidArgument(f"malformed comparison: {line} (not a number)") from None
    return Compare(os.fsencode(_unquote(key)), target, _COMPARE_OPS[op], operand)


def read_txn(lines: Iterator[str], prompt: Callable[[str], None] | None = None) -> Txn:
    """etcdctl's txn format: compare lines, a blank line, success requests, a blank line,
    failure requests, a blank line (or end of input). Reads no further than that."""
    parser = _op_parser()
    sections: list[list[str]] = []
    titles = (
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    )
    for title in titles:
        if prompt is not None:
            prompt(title)
        section: list[str] = []
        for raw in lines:
            line = raw.strip()
            if not line:
                break
            section.append(line)
        sections.append(section)
    compares, success, failure = sections
    return Txn(
        compare=tuple(parse_compare(c) for c in compares),
        success=tuple(parse_op(o, parser) for o in success),
        failure=tuple(parse_op(o, parser) for o in failure),
    )


def parse_txn(text: str) -> Txn:
    return read_txn(iter(text.splitlines()))
