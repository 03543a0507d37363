"""The `raftreg` command, in the spirit of etcdctl.

Client commands (put, get, del, txn, watch, compaction, member, endpoint, lease, config,
services) talk to the registry through a `RegistryClient`; `node` and `dev` run a server
process. Output formats: `simple` (etcdctl-like lines, the default), `table` (aligned columns)
and `json` (the response with its header; keys and values base64-encoded as etcdctl does).

`config get|set|watch|history|rollback` work on a service's settings through
`raftreg.configcenter` (values are JSON; `config set` takes NAME=VALUE where VALUE is JSON, or
else the text itself as a string, except that text starting with '"', '[' or '{' must be valid
JSON; every `config set` is one revision). `services list|watch` show the instances under
`/services/` (`raftreg.discovery.instance`); a malformed registration is a warning line on
stderr, never a failure. Commands without a table of their own print `simple` lines for
`-w table`.

Contract: `main()` returns the exit status. A `RegistryError` or an OS-level failure prints one
line `Error: <message>` to stderr and returns 1; bad usage returns 2 (argparse); when no
endpoint accepts a connection within --dial-timeout (2 s) it prints one line naming each
endpoint and why, with how to start a registry, and returns 3. --command-timeout (5 s) bounds
each request with its retries. Every global flag has a RAFTREG_* variable (the flag wins).
Without --endpoints or RAFTREG_ENDPOINTS, a `raftreg dev` running in this directory (its
`default.raftreg/dev.json`) is used before the --config file's cluster. The long-running
commands (`watch`, `lease keep-alive`, `config watch`, `services watch`) run until Ctrl-C and
then exit 0; `watch` and `config watch` exit 1 with an error line when the watch is compacted
(`services watch` re-lists instead), `lease keep-alive` when the lease is lost.

`lock NAME [CMD ...]` and `elect NAME [PROPOSAL]` are etcdctl's, on `raftreg.concurrency`
(same key layout, so they exclude etcdctl's own on an etcd backend). `lock` prints its key once
it holds the lock, then runs CMD (with RAFTREG_LOCK_KEY/RAFTREG_LOCK_REV, and etcdctl's
ETCD_LOCK_KEY/ETCD_LOCK_REV, in its environment) and exits with CMD's status, or holds until
Ctrl-C; the lock is released only after CMD has ended. If the session's lease is lost meanwhile
it terminates CMD and exits 1. `elect NAME PROPOSAL` campaigns, prints the leader's key and
value once elected and leads until Ctrl-C (exit 1 if the lease is lost); `elect NAME` prints
the leader and every change of leader until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from raftreg import __version__
from raftreg.client.endpoints import normalize_endpoints
from raftreg.client.etcd.backend import select_backend
from raftreg.client.grpc_client import GrpcRegistryClient
from raftreg.client.protocol import Member, RegistryClient, prefix_range_end
from raftreg.client.security import ClientSecurity, endpoints_want_tls
from raftreg.client.watch import WatchBatch
from raftreg.concurrency import Election, Lock, Session, observe
from raftreg.config import dev_config, load_config, split_hostport, write_secret_file
from raftreg.configcenter import (
    DELETE,
    BadValue,
    ConfigCenter,
    Version,
    config_prefix,
    value_text,
    versions_in,
)
from raftreg.discovery.catalog import (
    Malformed,
    decode_registrations,
    list_instances,
    registrations_prefix,
)
from raftreg.discovery.instance import (
    Instance,
    instance_json,
)
from raftreg.errors import FailedPrecondition, InvalidArgument, NotFound, RegistryError
from raftreg.store import Store
from raftreg.store.backup import Backup, decode_backup
from raftreg.store.commands import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    Put,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)

ClientFactory = Callable[[Sequence[str], float], RegistryClient]
OpResult = RangeResult | PutResult | DeleteResult | TxnResult

FORMATS = ("simple", "table", "json")
_SORT_TARGETS = {
    "KEY": SortTarget.KEY,
    "VERSION": SortTarget.VERSION,
    "CREATE": SortTarget.CREATE,
    "MODIFY": SortTarget.MOD,
    "VALUE": SortTarget.VALUE,
}


def _default_factory(endpoints: Sequence[str], timeout: float) -> RegistryClient:
    return GrpcRegistryClient(endpoints, timeout=timeout, connect_timeout=min(3.0, timeout))


def _secured_factory(backend: str, ns: argparse.Namespace) -> ClientFactory:
    """The client factory of `backend` with TLS / token from --cacert, --cert, --key, --token
    (else RAFTREG_CACERT, RAFTREG_CERT, RAFTREG_KEY, RAFTREG_TOKEN); https:// endpoints and any
    certificate file imply TLS (raftreg.client.security). Each connection attempt is bounded by
    --dial-timeout, each command's requests with their retries by --command-timeout."""
    dial = ns.dial_timeout
    sec = ClientSecurity.resolve(
        tls=endpoints_want_tls(ns.endpoints or None, config_path=ns.config, env=os.environ),
        ca_file=ns.tls_cacert, cert_file=ns.tls_cert, key_file=ns.tls_key, token=ns.auth_token,
        env=os.environ,
    )
    if backend == "etcd":
        if sec.token:
            raise InvalidArgument("--token: the etcd backend does not support token auth")
        from raftreg.client.etcd.client import EtcdRegistryClient

        def etcd(endpoints: Sequence[str], timeout: float) -> RegistryClient:
            return EtcdRegistryClient(
                endpoints, timeout=timeout, connect_timeout=min(dial, timeout),
                retry_budget=timeout, tls=sec.tls, ca_file=sec.ca_file,
                cert_file=sec.cert_file, key_file=sec.key_file,
            )

        return etcd

    def raftreg(endpoints: Sequence[str], timeout: float) -> RegistryClient:
        return GrpcRegistryClient(
            endpoints, timeout=timeout, connect_timeout=min(dial, timeout), retry_budget=timeout,
            tls=sec.tls, ca_file=sec.ca_file, cert_file=sec.cert_file, key_file=sec.key_file,
            token=sec.token,
        )

    return raftreg


# --- small parsers ---------------------------------------------------------------------------


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


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


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


# --- output ----------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A bordered table with columns as wide as their widest cell."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in cells), rule])


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def kv_json(kv: KeyValue) -> dict[str, Any]:
    return {
        "key": _b64(kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": _b64(kv.value),
        "lease": kv.lease,
    }


def result_json(r: OpResult) -> dict[str, Any]:
    """The etcd-shaped JSON of a KV response; the header carries the revision."""
    out: dict[str, Any] = {"header": {"revision": r.revision}}
    if isinstance(r, RangeResult):
        out.update(kvs=[kv_json(kv) for kv in r.kvs], more=r.more, count=r.count)
    elif isinstance(r, PutResult):
        if r.prev_kv is not None:
            out["prev_kv"] = kv_json(r.prev_kv)
    elif isinstance(r, DeleteResult):
        out.update(deleted=r.deleted, prev_kvs=[kv_json(kv) for kv in r.prev_kvs])
    else:
        names = {
            RangeResult: "response_range",
            PutResult: "response_put",
            DeleteResult: "response_delete_range",
            TxnResult: "response_txn",
        }
        out["succeeded"] = r.succeeded
        out["responses"] = [{names[type(x)]: result_json(x)} for x in r.responses]
    return out


def _kv_lines(
    kvs: Sequence[KeyValue], *, keys_only: bool = False, value_only: bool = False
) -> list[str]:
    out: list[str] = []
    for kv in kvs:
        if not value_only:
            out.append(_text(kv.key))
        if not keys_only:
            out.append(_text(kv.value))
    return out


def simple_lines(r: OpResult, *, keys_only: bool = False, value_only: bool = False) -> list[str]:
    """etcdctl's simple output of a KV response."""
    if isinstance(r, RangeResult):
        return _kv_lines(r.kvs, keys_only=keys_only, value_only=value_only)
    if isinstance(r, PutResult):
        return ["OK", *(_kv_lines([r.prev_kv]) if r.prev_kv is not None else [])]
    if isinstance(r, DeleteResult):
        return [str(r.deleted), *_kv_lines(r.prev_kvs)]
    out = ["SUCCESS" if r.succeeded else "FAILURE"]
    for x in r.responses:
        out += ["", *simple_lines(x)]
    return out


KV_HEADERS = ("KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION", "LEASE")


def kv_rows(kvs: Sequence[KeyValue]) -> list[list[object]]:
    return [
        [
            _text(kv.key),
            _text(kv.value),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            f"{kv.lease:x}" if kv.lease else "0",
        ]
        for kv in kvs
    ]


@dataclass
class _Ctx:
    fmt: str
    endpoints: list[str]
    timeout: float
    factory: ClientFactory
    out: TextIO
    err: TextIO
    stdin: TextIO

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")

    def json(self, obj: object) -> None:
        self.out.write(json.dumps(obj) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.out.write(format_table(headers, rows) + "\n")


# --- client commands ---------------------------------------------------------------------------

Command = Callable[[RegistryClient, argparse.Namespace, _Ctx], Awaitable[int]]


def _print_result(ctx: _Ctx, r: OpResult) -> None:
    if ctx.fmt == "json":
        ctx.json(result_json(r))
    elif ctx.fmt == "table" and isinstance(r, RangeResult):
        ctx.table(KV_HEADERS, kv_rows(r.kvs))
    elif ctx.fmt == "table" and isinstance(r, DeleteResult) and r.prev_kvs:
        ctx.table(KV_HEADERS, kv_rows(r.prev_kvs))
    else:
        ctx.print(*simple_lines(r))


async def cmd_put(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    op = _put_op(ns)
    _print_result(ctx, await client.put(op.key, op.value, lease=op.lease, prev_kv=op.prev_kv))
    return 0


async def cmd_get(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    r = _range_op(ns)
    res = await client.get(
        r.key,
        range_end=r.range_end,
        revision=r.revision,
        limit=r.limit,
        keys_only=r.keys_only,
        count_only=r.count_only,
        serializable=ns.consistency == "s",
        sort_order=r.sort_order,
        sort_target=r.sort_target,
    )
    if ctx.fmt == "simple" and r.count_only:
        ctx.print(str(res.count))
    elif ctx.fmt == "simple":
        ctx.print(*simple_lines(res, keys_only=r.keys_only, value_only=ns.print_value_only))
    else:
        _print_result(ctx, res)
    return 0


async def cmd_del(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    d = _delete_op(ns)
    _print_result(ctx, await client.delete(d.key, range_end=d.range_end, prev_kv=d.prev_kv))
    return 0


async def cmd_txn(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    interactive = ctx.stdin.isatty()

    def prompt(title: str) -> None:
        ctx.err.write(title + "\n")
        ctx.err.flush()

    txn = read_txn(iter(ctx.stdin), prompt if interactive else None)
    _print_result(ctx, await client.txn(txn))
    return 0


async def cmd_compaction(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    rev = await client.compact(ns.revision)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}})
    else:
        ctx.print(f"compacted revision {ns.revision}")
    return 0


async def cmd_member_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    members = await client.member_list()
    if ctx.fmt == "json":
        ctx.json({"members": [asdict(m) for m in members]})
        return 0
    rows = [
        [
            f"{m.id:x}",
            "started" if m.connected else "unreachable",
            m.name,
            ",".join(m.peer_urls),
            ",".join(m.client_urls),
            str(m.is_learner).lower(),
            str(m.is_leader).lower(),
        ]
        for m in members
    ]
    if ctx.fmt == "table":
        ctx.table(
            ("ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER", "IS LEADER"),
            rows,
        )
    else:
        ctx.print(*(", ".join(r) for r in rows))
    return 0


def _raftreg_only(client: RegistryClient, what: str) -> GrpcRegistryClient:
    if not isinstance(client, GrpcRegistryClient):
        raise InvalidArgument(f"{what} needs the raftreg backend (for etcd, use etcdctl/etcdutl)")
    return client


def _member_id(text: str, members: Sequence[Member]) -> int:
    """A member id given in hex (as `member list` prints it) or a member name."""
    for m in members:
        if text == m.name:
            return m.id
    try:
        return int(text, 16)
    except ValueError:
        raise InvalidArgument(f"{text!r} is neither a member name nor a hex member id") from None


async def cmd_member_add(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "member add")
    members = await c.member_add(ns.name, ns.peer_urls, ns.client_urls)
    new = members[0]
    if ctx.fmt == "json":
        ctx.json({"member": asdict(new), "members": [asdict(m) for m in members]})
        return 0
    ctx.print(
        f"Member {new.id:x} added to the cluster",
        "",
        "Start the new member with an empty data dir, its [[node]] entry in the configuration",
        "and --join, e.g.:",
        f"  raftreg node --config cluster.toml --name {ns.name} --join",
    )
    return 0


async def cmd_member_remove(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "member remove")
    mid = _member_id(ns.member, await c.member_list())
    members = await c.member_remove(mid)
    if ctx.fmt == "json":
        ctx.json({"removed": f"{mid:x}", "members": [asdict(m) for m in members]})
    else:
        ctx.print(f"Member {mid:x} removed from the cluster")
    return 0


async def cmd_snapshot_save(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    c = _raftreg_only(client, "snapshot save")
    show = _progress_line(ctx, "received")
    blob = await c.snapshot(timeout=max(ctx.timeout, 60.0), progress=show)
    show(-1, -1)
    backup = decode_backup(blob)  # verify before anything is written
    path = Path(ns.file)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    if ctx.fmt == "json":
        ctx.json({"file": str(path), "revision": backup.revision, "size": len(blob),
                  "sha256": backup.sha256})
    else:
        ctx.print(f"Snapshot saved at {path} (revision {backup.revision}, {len(blob)} bytes)")
    return 0


def _progress_line(ctx: _Ctx, verb: str) -> Callable[[int, int], None]:
    """`show(done, total)`: one self-overwriting "verb X of Y MiB" line on stderr when stderr is
    a terminal, nothing otherwise; `show(-1, -1)` ends the line."""
    live = ctx.err.isatty()

    def show(done: int, total: int) -> None:
        if not live:
            return
        if done < 0:
            ctx.err.write("\n")
        else:
            ctx.err.write(f"\r{verb} {done / 2**20:.1f} of {total / 2**20:.1f} MiB")
        ctx.err.flush()

    return show


def _read_backup(file: str) -> tuple[bytes, Backup]:
    blob = Path(file).read_bytes()
    return blob, decode_backup(blob)


def cmd_snapshot_status(ns: argparse.Namespace, ctx: _Ctx) -> int:
    blob, b = _read_backup(ns.file)
    store = Store()
    store.restore(b.state)
    doc = {"cluster": b.cluster, "revision": b.revision, "keys": store.key_count(),
           "leases": len(store.leases()), "hash": f"{store.hash():x}", "size": len(blob),
           "sha256": b.sha256, "created_at_ms": b.created_at_ms}
    if ctx.fmt == "json":
        ctx.json(doc)
    elif ctx.fmt == "table":
        ctx.table(tuple(k.upper() for k in doc), [list(doc.values())])
    else:
        ctx.print(", ".join(f"{k}={v}" for k, v in doc.items()))
    return 0


def cmd_snapshot_restore(ns: argparse.Namespace, ctx: _Ctx) -> int:
    try:
        from raftreg.server.restore import restore_cluster  # offline tool: loads server code
    except ModuleNotFoundError as e:
        raise FailedPrecondition(f"restoring needs the server extra ({e.name} is missing): "
                                 "pip install 'raftreg[server]'") from None

    cfg = load_config(ns.config)
    backup, dirs = restore_cluster(cfg, Path(ns.file).read_bytes(), ns.name or ())
    for d in dirs:
        ctx.print(f"restored revision {backup.revision} into {d}")
    ctx.print("Start every member of the new cluster (without --join).")
    return 0


def human_bytes(n: int) -> str:
    """Sizes as etcdctl prints them (SI units: "0 B", "25 kB", "1.2 MB")."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


STATUS_HEADERS = (
    "ENDPOINT",
    "ID",
    "NAME",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "RAFT TERM",
    "RAFT INDEX",
    "APPLIED INDEX",
    "REVISION",
    "COMPACTED",
    "KEYS",
    "HASH",
    "ERRORS",
)


async def cmd_endpoint_status(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    eps = list(client.endpoints)
    results = await asyncio.gather(*(client.status(ep) for ep in eps), return_exceptions=True)
    rows: list[list[object]] = []
    docs: list[dict[str, Any]] = []
    failed = 0
    for ep, st in zip(eps, results, strict=True):
        if isinstance(st, RegistryError):
            ctx.err.write(f"Error: failed to get the status of endpoint {ep}: {st}\n")
            failed += 1
            continue
        if isinstance(st, BaseException):
            raise st
        docs.append({"Endpoint": ep, "Status": asdict(st)})
        rows.append(
            [
                ep,
                f"{st.member_id:x}",
                st.name,
                st.version,
                human_bytes(st.db_size),
                str(st.is_leader).lower(),
                st.raft_term,
                st.raft_index,
                st.applied_index,
                st.revision,
                st.compact_revision,
                st.keys,
                f"{st.hash:x}",
                "; ".join(st.errors),
            ]
        )
    if ctx.fmt == "json":
        ctx.json(docs)
    elif ctx.fmt == "table" and rows:
        ctx.table(STATUS_HEADERS, rows)
    else:
        ctx.print(*(", ".join(str(c) for c in r) for r in rows))
    return 1 if failed else 0


async def _check_health(ctx: _Ctx, endpoint: str) -> tuple[str, bool, float, str]:
    start = time.monotonic()
    try:
        async with ctx.factory([endpoint], ctx.timeout) as c:
            await c.get(b"health", count_only=True)
    except RegistryError as e:
        return endpoint, False, time.monotonic() - start, str(e)
    return endpoint, True, time.monotonic() - start, ""


async def cmd_endpoint_health(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    results = await asyncio.gather(*(_check_health(ctx, ep) for ep in client.endpoints))
    if ctx.fmt == "json":
        ctx.json(
            [
                {"endpoint": ep, "health": ok, "took": f"{took * 1000:.3f}ms", "error": err}
                for ep, ok, took, err in results
            ]
        )
    elif ctx.fmt == "table":
        ctx.table(
            ("ENDPOINT", "HEALTH", "TOOK", "ERROR"),
            [[ep, str(ok).lower(), f"{took * 1000:.3f}ms", err] for ep, ok, took, err in results],
        )
    else:
        for ep, ok, took, err in results:
            if ok:
                ctx.print(
                    f"{ep} is healthy: successfully committed proposal: took = {took * 1000:.3f}ms"
                )
            else:
                ctx.err.write(f"{ep} is unhealthy: failed to commit proposal: {err}\n")
    return 0 if all(ok for _, ok, _, _ in results) else 1


async def cmd_lease_grant(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    r = await client.lease_grant(ns.ttl)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": r.revision}, "ID": r.id, "TTL": r.ttl})
    else:
        ctx.print(f"lease {r.id:016x} granted with TTL({r.ttl}s)")
    return 0


async def cmd_lease_revoke(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    await client.lease_revoke(ns.id)
    if ctx.fmt == "json":
        ctx.json({"ID": ns.id, "revoked": True})
    else:
        ctx.print(f"lease {ns.id:016x} revoked")
    return 0


async def cmd_lease_timetolive(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    t = await client.lease_time_to_live(ns.id, keys=ns.keys)
    if ctx.fmt == "json":
        ctx.json(
            {
                "ID": t.id,
                "TTL": t.ttl,
                "grantedTTL": t.granted_ttl,
                "keys": [_b64(k) for k in t.keys],
            }
        )
        return 0
    if t.ttl == -1:
        ctx.print(f"lease {ns.id:016x} already expired")
        return 0
    line = f"lease {t.id:016x} granted with TTL({t.granted_ttl}s), remaining({t.ttl}s)"
    if ns.keys:
        line += f", attached keys([{' '.join(_text(k) for k in t.keys)}])"
    ctx.print(line)
    return 0


async def cmd_lease_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    ids = await client.lease_list()
    if ctx.fmt == "json":
        ctx.json({"leases": [{"ID": i} for i in ids]})
    elif ctx.fmt == "table":
        ctx.table(("ID",), [[f"{i:016x}"] for i in ids])
    else:
        ctx.print(f"found {len(ids)} leases", *(f"{i:016x}" for i in ids))
    return 0


def _interrupted() -> int:
    """Ctrl-C: asyncio.run cancels the command's task; a long-running command ends cleanly."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return 0


def event_json(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": e.type.name, "kv": kv_json(e.kv)}
    if e.prev_kv is not None:
        out["prev_kv"] = kv_json(e.prev_kv)
    return out


def watch_json(b: WatchBatch) -> dict[str, Any]:
    """One watch response as JSON (etcd-shaped; keys and values base64)."""
    out: dict[str, Any] = {
        "header": {"revision": b.revision},
        "events": [event_json(e) for e in b.events],
    }
    if b.progress:
        out["progress_notify"] = True
    if b.compacted:
        out.update(canceled=True, compact_revision=b.compact_revision)
    return out


def watch_lines(b: WatchBatch) -> list[str]:
    """etcdctl's simple watch output: per event the type, the previous key and value (with
    --prev-kv), then the key and the value (empty for a DELETE)."""
    out: list[str] = []
    for e in b.events:
        out.append(e.type.name)
        if e.prev_kv is not None:
            out += [_text(e.prev_kv.key), _text(e.prev_kv.value)]
        out += [_text(e.kv.key), _text(e.kv.value)]
    return out


async def cmd_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    key, end = _range_bounds(ns)
    if ns.rev < 0:
        raise InvalidArgument("--rev must be >= 0")
    try:
        w = await client.watch(
            key,
            range_end=end,
            start_revision=ns.rev,
            prev_kv=ns.prev_kv,
            progress_notify=ns.progress_notify,
        )
        async with w:
            async for batch in w:
                if ctx.fmt == "json":
                    ctx.json(watch_json(batch))
                elif not batch.compacted:
                    ctx.print(*watch_lines(batch))
                ctx.out.flush()
                if batch.compacted:
                    ctx.err.write(
                        "Error: watch was canceled: required revision has been compacted "
                        f"(compact revision {batch.compact_revision})\n"
                    )
                    return 1
    except asyncio.CancelledError:
        return _interrupted()
    return 0


async def cmd_lease_keepalive(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    lease_id: int = ns.id

    def show(i: int, ttl: int) -> None:
        if ctx.fmt == "json":
            ctx.json({"ID": i, "TTL": ttl})
        else:
            ctx.print(f"lease {i:016x} keepalived with TTL({ttl})")
        ctx.out.flush()

    def gone() -> int:
        ctx.err.write(f"Error: lease {lease_id:016x} expired or revoked\n")
        return 1

    if ns.once:
        ttl = await client.lease_keepalive_once(lease_id)
        if ttl <= 0:
            return gone()
        show(lease_id, ttl)
        return 0
    keeper = client.keepalive_manager()
    lost = asyncio.Event()
    try:
        started = keeper.clock.now()
        t = await client.lease_time_to_live(lease_id)
        if t.ttl <= 0:
            return gone()
        keeper.keep(
            lease_id,
            t.granted_ttl,
            lambda _i: lost.set(),
            on_renew=show,
            alive_for=t.ttl - (keeper.clock.now() - started),
        )
        await lost.wait()
    except asyncio.CancelledError:
        return _interrupted()
    finally:
        keeper.forget(lease_id)
    return gone()


# --- locks and elections (raftreg.concurrency) ------------------------------------------------


def _show_kv(ctx: _Ctx, kv: KeyValue) -> None:
    """etcdctl's output for `lock`/`elect`: the key, then the value (`elect` only), or the
    key-value as JSON."""
    if ctx.fmt == "json":
        ctx.json(kv_json(kv))
    else:
        ctx.print(_text(kv.key), *([_text(kv.value)] if kv.value else []))
    ctx.out.flush()


async def _own_kv(client: RegistryClient, key: bytes) -> KeyValue:
    r = await client.get(key)
    if not r.kvs:
        raise NotFound(f"{_text(key)} is gone (session lease lost?)")
    return r.kvs[0]


async def _run_holding(session: Session, lock: Lock, argv: Sequence[str], ctx: _Ctx) -> int:
    """Run `argv` while holding `lock`; it never outlives the lock: on a lost session or
    Ctrl-C it is terminated (killed after 5 s) before this returns."""
    key = _text(lock.key)
    env = dict(os.environ, RAFTREG_LOCK_KEY=key, RAFTREG_LOCK_REV=str(lock.revision),
               ETCD_LOCK_KEY=key, ETCD_LOCK_REV=str(lock.revision))
    proc = await asyncio.create_subprocess_exec(*argv, env=env)
    ended = asyncio.ensure_future(proc.wait())
    lost = asyncio.ensure_future(session.wait_lost())
    try:
        await asyncio.wait({ended, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait({ended}, timeout=5.0)
            if proc.returncode is None:
                proc.kill()
                await ended
    rc = proc.returncode
    assert rc is not None
    if lost.done() and not lost.cancelled():
        ctx.err.write(f"Error: the lock {key} was lost (session lease expired); "
                      "the command was terminated\n")
        return 1
    return rc if rc >= 0 else 128 - rc


async def cmd_lock(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    async with Session(client, ttl=ns.ttl) as session:
        lock = Lock(session, ns.name)
        try:
            await lock.acquire()
        except asyncio.CancelledError:  # Ctrl-C while waiting: the acquire left no key
            return _interrupted()
        try:
            _show_kv(ctx, await _own_kv(client, lock.key))
            if ns.cmd:
                return await _run_holding(session, lock, ns.cmd, ctx)
            await session.wait_lost()
            ctx.err.write(f"Error: the lock {_text(lock.key)} was lost "
                          "(session lease expired)\n")
            return 1
        except asyncio.CancelledError:
            return _interrupted()
        finally:
            await lock.release()


async def cmd_elect(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    if ns.proposal is None:
        try:
            async with observe(client, ns.name) as leaders:
                async for kv in leaders:
                    _show_kv(ctx, kv)
        except asyncio.CancelledError:
            return _interrupted()
        return 0
    async with Session(client, ttl=ns.ttl) as session:
        election = Election(session, ns.name)
        try:
            await election.campaign(ns.proposal)
            _show_kv(ctx, await _own_kv(client, election.key))
            await session.wait_lost()
            ctx.err.write("Error: no longer the leader (session lease expired)\n")
            return 1
        except asyncio.CancelledError:
            return _interrupted()
        finally:
            await election.resign()


# --- config center and services ----------------------------------------------------------------


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_setting_value(text: str) -> Any:
    """A `config set` VALUE: JSON text (`8080`, `true`, `"x"`, `[1, 2]`, `{"a": 1}`), else the
    text itself as a string (`round_robin`, `NaN`, ``). Text starting with '"', '[' or '{' was
    meant as JSON and must be valid JSON."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as e:
        if text.lstrip().startswith(('"', "[", "{")):
            raise InvalidArgument(f"value {text!r} is not valid JSON: {e}") from None
        return text


def parse_setting(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` (split at the first '='; see `parse_setting_value`)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidArgument(f"expected NAME=VALUE, got {text!r}")
    return name, parse_setting_value(value)


def _bad_json(v: BadValue) -> dict[str, str]:
    return {"raw": value_text(v), "reason": v.reason}


def version_json(service: str, v: Version) -> dict[str, Any]:
    """One version of a service's config: values written, names deleted, and the written
    values that are not JSON (raw text and reason)."""
    return {
        "service": service,
        "revision": v.revision,
        "puts": {n: x for n, x in v.puts.items() if not isinstance(x, BadValue)},
        "deletes": list(v.deletes),
        "invalid": {n: _bad_json(x) for n, x in v.puts.items() if isinstance(x, BadValue)},
    }


def version_lines(v: Version) -> list[str]:
    """`REV SET NAME=VALUE` / `REV DELETE NAME` lines (VALUE as JSON, or the raw stored text
    when it is not JSON)."""
    out = [f"{v.revision} SET {n}={value_text(x)}" for n, x in v.puts.items()]
    return out + [f"{v.revision} DELETE {n}" for n in v.deletes]


def _warn_bad_versions(ctx: _Ctx, service: str, versions: Sequence[Version]) -> None:
    for v in versions:
        for n, x in v.puts.items():
            if isinstance(x, BadValue):
                ctx.err.write(f"Warning: {service} revision {v.revision}: {n}: {x.reason}\n")


async def cmd_config_get(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    snap = await ConfigCenter(client).get(ns.service, revision=ns.rev)
    entries = list(snap.entries.values())
    if ns.name is not None:
        entry = snap.entries.get(ns.name)
        if entry is None:
            raise NotFound(f"{ns.service} has no setting {ns.name!r}")
        if isinstance(entry.value, BadValue) and ctx.fmt == "simple":
            raise InvalidArgument(f"{ns.service} setting {ns.name!r}: {entry.value.reason}")
        entries = [entry]
    for e in entries:
        if isinstance(e.value, BadValue):
            ctx.err.write(f"Warning: {ns.service} setting {e.name!r}: {e.value.reason}\n")
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": snap.revision},
                "service": ns.service,
                "config": {e.name: e.value for e in entries if e.valid},
                "invalid": {
                    e.name: _bad_json(e.value) for e in entries if isinstance(e.value, BadValue)
                },
            }
        )
    elif ctx.fmt == "table":
        ctx.table(
            ("NAME", "VALUE", "MOD_REV", "VERSION"),
            [[e.name, value_text(e.value), e.mod_revision, e.version] for e in entries],
        )
    elif ns.name is not None:
        ctx.print(value_text(entries[0].value))
    else:
        ctx.print(*(f"{e.name}={value_text(e.value)}" for e in entries if e.valid))
    return 0


async def cmd_config_set(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    changes: dict[str, Any] = {}
    items = [parse_setting(s) for s in ns.settings] + [(n, DELETE) for n in ns.delete]
    for name, value in items:
        if name in changes:
            raise InvalidArgument(f"setting {name!r} given twice")
        changes[name] = value
    rev = await ConfigCenter(client).publish(
        ns.service, changes, expect_revision=ns.expect_rev
    )
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}, "service": ns.service})
    else:
        ctx.print(f"published revision {rev}")
    return 0


async def cmd_config_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    if ns.rev < 0:
        raise InvalidArgument("--rev must be >= 0")
    try:
        w = await client.watch(config_prefix(ns.service), prefix=True, start_revision=ns.rev)
        async with w:
            async for batch in w:
                if batch.compacted:
                    ctx.err.write(
                        "Error: watch was canceled: required revision has been compacted "
                        f"(compact revision {batch.compact_revision})\n"
                    )
                    return 1
                versions = versions_in(ns.service, batch.events)
                _warn_bad_versions(ctx, ns.service, versions)
                for v in versions:
                    if ctx.fmt == "json":
                        ctx.json(version_json(ns.service, v))
                    else:
                        ctx.print(*version_lines(v))
                ctx.out.flush()
    except asyncio.CancelledError:
        return _interrupted()
    return 0


async def cmd_config_history(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    center = ConfigCenter(client, history_timeout=max(10.0, ctx.timeout))
    h = await center.history(ns.service, ns.name)
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": h.revision},
                "service": ns.service,
                "oldest_revision": h.oldest_revision,
                "compacted": h.compacted,
                "versions": [version_json(ns.service, v) for v in h],
            }
        )
        return 0
    if h.compacted:
        ctx.err.write(
            f"Note: history of {ns.service} before revision {h.oldest_revision} "
            "has been compacted\n"
        )
    _warn_bad_versions(ctx, ns.service, h.versions)
    if ctx.fmt == "table":
        rows: list[list[object]] = []
        for v in h:
            rows += [[v.revision, "SET", n, value_text(x)] for n, x in v.puts.items()]
            rows += [[v.revision, "DELETE", n, ""] for n in v.deletes]
        ctx.table(("REVISION", "CHANGE", "NAME", "VALUE"), rows)
    else:
        ctx.print(*(line for v in h for line in version_lines(v)))
    return 0


async def cmd_config_rollback(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    rev = await ConfigCenter(client).rollback(ns.service, ns.rev)
    if ctx.fmt == "json":
        ctx.json({"header": {"revision": rev}, "service": ns.service, "rolled_back_to": ns.rev})
    else:
        ctx.print(f"rolled back {ns.service} to revision {ns.rev}: published revision {rev}")
    return 0


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _warn_malformed(ctx: _Ctx, malformed: Iterable[Malformed]) -> None:
    for m in malformed:
        ctx.err.write(f"Warning: skipping malformed registration {_text(m.key)}: {m.reason}\n")


def _instances(ctx: _Ctx, kvs: Sequence[KeyValue],
               service: str | None) -> list[tuple[Instance, KeyValue]]:
    """The well-formed registrations of `service` (None: any) among `kvs`; a warning line on
    stderr for each malformed one."""
    good, bad = decode_registrations(kvs, service)
    _warn_malformed(ctx, bad)
    return [(x.instance, x.kv) for x in good]


INSTANCE_HEADERS = ("SERVICE", "ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "AGE", "LEASE",
                    "TTL", "METADATA")


async def cmd_services_list(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    """Instances with their lease and its remaining TTL ("-": no lease; "expired": the lease
    ended after the instances were read)."""
    cat = await list_instances(client, ns.service)
    _warn_malformed(ctx, cat.malformed)
    if ctx.fmt == "json":
        ctx.json(
            {
                "header": {"revision": cat.revision},
                "instances": [
                    {**instance_json(x.instance, x.kv),
                     "ttl": x.ttl.ttl if x.ttl else None,
                     "granted_ttl": x.ttl.granted_ttl if x.ttl else None}
                    for x in cat.instances
                ],
            }
        )
        return 0
    now = time.time()
    rows = [
        [
            i.service, i.id, i.address, i.weight, i.zone, i.version,
            _age(now - i.registered_at) if i.registered_at > 0 else "-",
            f"{x.kv.lease:x}" if x.kv.lease else "-",
            "-" if x.ttl is None else "expired" if x.ttl.ttl < 0 else f"{x.ttl.ttl}s",
            ",".join(f"{k}={v}" for k, v in sorted(i.metadata.items())),
        ]
        for x in cat.instances
        for i in (x.instance,)
    ]
    if ctx.fmt == "table":
        ctx.table(INSTANCE_HEADERS, rows)
    else:
        ctx.print(*(", ".join(str(c) for c in r) for r in rows))
    return 0


def instance_line(kind: str, i: Instance) -> str:
    """`ADDED|UPDATED|REMOVED service/id address weight=W zone=Z version=V`."""
    return (
        f"{kind} {i.service}/{i.id} {i.address} weight={i.weight} zone={i.zone} "
        f"version={i.version}"
    )


async def cmd_services_watch(client: RegistryClient, ns: argparse.Namespace, ctx: _Ctx) -> int:
    """The current instances as ADDED, then every change, until Ctrl-C. A compacted watch
    re-lists and prints the difference."""
    prefix = registrations_prefix(ns.service)
    known: dict[bytes, Instance] = {}

    def show(kind: str, i: Instance, revision: int) -> None:
        if ctx.fmt == "json":
            ctx.json({"type": kind, "revision": revision, "instance": instance_json(i)})
        else:
            ctx.print(instance_line(kind, i))

    def put(key: bytes, i: Instance | None, revision: int) -> None:
        old = known.pop(key, None)
        if i is None:
            if old is not None:
                show("REMOVED", old, revision)
            return
        known[key] = i
        if old is None:
            show("ADDED", i, revision)
        elif old != i:
            show("UPDATED", i, revision)

    try:
        while True:
            snapshot, w = await client.list_then_watch(prefix)
            async with w:
                fresh = {kv.key: i for i, kv in _instances(ctx, snapshot.kvs, ns.service)}
                for key in [k for k in known if k not in fresh]:
                    put(key, None, snapshot.revision)
                for key, i in fresh.items():
                    put(key, i, snapshot.revision)
                ctx.out.flush()
                async for batch in w:
                    if batch.compacted:
                        break
                    for e in batch.events:
                        if e.type == EventType.DELETE:
                            put(e.kv.key, None, e.kv.mod_revision)
                            continue
                        decoded = _instances(ctx, [e.kv], ns.service)
                        put(e.kv.key, decoded[0][0] if decoded else None, e.kv.mod_revision)
                    ctx.out.flush()
                else:
                    return 0
    except asyncio.CancelledError:
        return _interrupted()


# --- server commands -----------------------------------------------------------------------


def _serve_node() -> Callable[..., int]:
    """Imported only when a server command runs: client commands never load the server (and
    `pip install raftreg` does not install what it needs)."""
    try:
        from raftreg.server.main import serve_node
    except ModuleNotFoundError as e:
        raise FailedPrecondition(
            f"running a node needs the server extra ({e.name} is missing): "
            "pip install 'raftreg[server]'") from None
    return serve_node


def cmd_node(ns: argparse.Namespace, ctx: _Ctx) -> int:
    cfg = load_config(getattr(ns, "config", "cluster.toml"))
    cfg.node(ns.name)  # fail early with a clear message for an unknown name
    return _serve_node()(cfg, ns.name, join=ns.join)


def _port_free(host: str, port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _raft_address(listen: str) -> str:
    """A free port next to the client port (port + 1 when free, else any free port)."""
    host, port = split_hostport(listen)
    if _port_free(host, port + 1):
        return f"{host}:{port + 1}"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        free = int(s.getsockname()[1])
    return f"{host}:{free}"


DEV_DATA_DIR = "default.raftreg"
_DEV_MARKER = "dev.json"  # in the data dir while `raftreg dev` runs: {"pid", "client"}


def running_dev(data_dir: str | Path = DEV_DATA_DIR) -> str | None:
    """The client address of a `raftreg dev` running with `data_dir` (None: none is)."""
    try:
        doc = json.loads((Path(data_dir) / _DEV_MARKER).read_text())
        pid, client = int(doc["pid"]), str(doc["client"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return client


def cmd_dev(ns: argparse.Namespace, ctx: _Ctx) -> int:
    split_hostport(ns.listen)
    if ns.http:
        split_hostport(ns.http)
    cfg = dev_config(ns.data_dir, client=ns.listen, raft=_raft_address(ns.listen), http=ns.http)
    serve = _serve_node()
    ctx.err.write(f"raftreg dev: gRPC (raftreg.v1 and etcd's etcdserverpb) on {ns.listen}, "
                  f"data in {ns.data_dir}\n")
    if ns.http:
        ctx.err.write(f"raftreg dev: etcd's JSON gateway (/v3/...) and /metrics on "
                      f"http://{ns.http}; the dashboard on http://{ns.http}/ui/\n")
    hint = "raftreg put a b" if Path(ns.data_dir).resolve() == Path(DEV_DATA_DIR).resolve() \
        else f"raftreg --endpoints {ns.listen} put a b"
    ctx.err.write(f"raftreg dev: from another shell in this directory: {hint}; etcdctl: "
                  f"etcdctl --endpoints {ns.listen} put a b\n")
    marker = Path(ns.data_dir) / _DEV_MARKER
    Path(ns.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "client": ns.listen}))
    try:
        return serve(cfg, "dev")
    finally:
        marker.unlink(missing_ok=True)


def cmd_secret(ns: argparse.Namespace, ctx: _Ctx) -> int:
    path = Path(ns.file)
    if write_secret_file(path):
        ctx.out.write(f"wrote a new cluster secret to {path} (mode 0600); name it as "
                      "secret_file in [cluster] and keep it out of version control\n")
        return 0
    ctx.out.write(f"{path} exists; left as it is\n")
    return 0


# --- parser ----------------------------------------------------------------------------------


DIAL_TIMEOUT_S = 2.0  # etcdctl's defaults
COMMAND_TIMEOUT_S = 5.0


def _env(name: str, default: str | None) -> str | None:
    """A global option's default: its RAFTREG_* variable, else `default`."""
    value = os.environ.get(name, "").strip()
    return value or default


def _seconds(text: str) -> float:
    """A positive duration in seconds: "2", "2.5", "2s" or "500ms" (etcdctl's forms)."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("s"):
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 2, 2s, 500ms)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """Global options; accepted before or after the subcommand. Only the top-level copy has
    defaults (the others SUPPRESS, so they never overwrite a value given earlier). Every one
    has a RAFTREG_* variable, which the flag overrides."""
    p = argparse.ArgumentParser(add_help=False)
    d: Callable[[object], object] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument(
        "--endpoints",
        default=d(None),
        help="comma-separated host:port list; etcd://host:port,... selects the etcd backend "
        "(env RAFTREG_ENDPOINTS; default: the [registry] table or client addresses in the "
        "--config file, else a `raftreg dev` running in this directory, else 127.0.0.1:2379)",
    )
    g.add_argument("-w", "--write-out", choices=FORMATS,
                   default=d(_env("RAFTREG_WRITE_OUT", "simple")),
                   help="output format (env RAFTREG_WRITE_OUT)")
    g.add_argument("--dial-timeout", type=_seconds,
                   default=d(_env("RAFTREG_DIAL_TIMEOUT", str(DIAL_TIMEOUT_S))),
                   help=f"give up connecting after this long (default {DIAL_TIMEOUT_S:g}s; "
                   "env RAFTREG_DIAL_TIMEOUT); exit status 3")
    g.add_argument("--command-timeout", "--timeout", dest="timeout", type=_seconds,
                   default=d(_env("RAFTREG_COMMAND_TIMEOUT", str(COMMAND_TIMEOUT_S))),
                   help=f"bound on each request, retries included (default "
                   f"{COMMAND_TIMEOUT_S:g}s; env RAFTREG_COMMAND_TIMEOUT)")
    g.add_argument("--config", default=d(_env("RAFTREG_CONFIG", "cluster.toml")),
                   help="cluster configuration file (env RAFTREG_CONFIG; default cluster.toml)")
    # dest names of their own: subcommands have positionals called "key"
    g.add_argument("--cacert", dest="tls_cacert", default=d(None),
                   help="verify the servers with this CA (PEM); implies TLS (env RAFTREG_CACERT)")
    g.add_argument("--cert", dest="tls_cert", default=d(None),
                   help="client certificate (PEM) for mutual TLS (env RAFTREG_CERT)")
    g.add_argument("--key", dest="tls_key", default=d(None),
                   help="key of the client certificate (PEM) (env RAFTREG_KEY)")
    g.add_argument("--token", dest="auth_token", default=d(None),
                   help="bearer token sent with every request (env RAFTREG_TOKEN)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="raftreg",
        description="raftreg: a Raft-backed etcd-style service registry",
        parents=[_global_options(defaults=True)],
        epilog="exit status: 0 success, 1 error, 2 bad usage, 3 cannot connect",
    )
    parser.add_argument("--version", action="version", version=f"raftreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def leaf(
        group: Any, name: str, help: str, func: Command | Callable[[argparse.Namespace, _Ctx], int]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=func)
        return p

    _add_put_args(leaf(sub, "put", "put a key", cmd_put))
    _add_range_args(leaf(sub, "get", "get a key or range", cmd_get), reads=True)
    _add_range_args(leaf(sub, "del", "delete a key or range", cmd_del), reads=False)
    leaf(sub, "txn", "run a transaction read from stdin (etcdctl format)", cmd_txn)
    watch = leaf(sub, "watch", "watch a key or range until Ctrl-C", cmd_watch)
    watch.add_argument("key", help="the key, or the start of the range")
    watch.add_argument("range_end", nargs="?", default=None,
                       help="end of the range [KEY, RANGE_END), exclusive")
    watch.add_argument("--prefix", action="store_true", help="every key with this prefix")
    watch.add_argument("--rev", type=int, default=0, help="start at this revision (0 = now)")
    watch.add_argument("--prev-kv", action="store_true", help="also print the previous kv")
    watch.add_argument(
        "--progress-notify", action="store_true", help="ask for progress notifications"
    )
    watch.set_defaults(from_key=False)
    leaf(sub, "compaction", "discard history before REV", cmd_compaction).add_argument(
        "revision", type=int, help="the oldest revision to keep"
    )

    member = sub.add_parser("member", help="cluster membership").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(member, "list", "list members", cmd_member_list)
    madd = leaf(member, "add", "add a member (raftreg), then start it with --join", cmd_member_add)
    madd.add_argument("name", help="the new member's name (its [[node]] name)")
    madd.add_argument("--peer-urls", required=True, help="its raft address, e.g. 127.0.0.1:23804")
    madd.add_argument("--client-urls", required=True, help="its client address host:port")
    leaf(member, "remove", "remove a member (the leader too: it hands over first)",
         cmd_member_remove).add_argument("member", help="member name or hex id")

    snapshot = sub.add_parser("snapshot", help="backup and restore").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(snapshot, "save", "save a backup of the running cluster to FILE",
         cmd_snapshot_save).add_argument("file", help="where to write the backup")
    leaf(snapshot, "status", "verify a backup FILE and describe it",
         cmd_snapshot_status).add_argument("file", help="a backup file")
    restore = leaf(snapshot, "restore",
                   "seed the data dirs of a NEW cluster (--config) from a backup FILE",
                   cmd_snapshot_restore)
    restore.add_argument("file", help="a backup file")
    restore.add_argument("--name", action="append", default=[],
                         help="only this member (repeatable; default: every member)")

    endpoint = sub.add_parser("endpoint", help="per-endpoint checks").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(endpoint, "status", "status of every endpoint", cmd_endpoint_status)
    leaf(endpoint, "health", "health of every endpoint", cmd_endpoint_health)

    lease = sub.add_parser("lease", help="leases").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(lease, "grant", "grant a lease", cmd_lease_grant).add_argument(
        "ttl", type=int, help="time to live, seconds")
    leaf(lease, "revoke", "revoke a lease", cmd_lease_revoke).add_argument(
        "id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ttl = leaf(lease, "timetolive", "remaining time of a lease", cmd_lease_timetolive)
    ttl.add_argument("id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ttl.add_argument("--keys", action="store_true", help="also list the attached keys")
    leaf(lease, "list", "list leases", cmd_lease_list)
    ka = leaf(lease, "keep-alive", "keep a lease alive until Ctrl-C", cmd_lease_keepalive)
    ka.add_argument("id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ka.add_argument("--once", action="store_true", help="renew once and exit")

    lock = leaf(sub, "lock", "hold a distributed lock: run CMD while holding it, or hold until "
                "Ctrl-C", cmd_lock)
    lock.add_argument("name", help="the lock's name (keys NAME/<lease id hex>, as etcdctl)")
    lock.add_argument("cmd", nargs="*", metavar="CMD",
                      help="command to run while holding the lock (after --; options of "
                      "`lock` go before NAME)")
    lock.add_argument("--ttl", type=int, default=10, help="session lease TTL, seconds")
    elect = leaf(sub, "elect", "campaign with PROPOSAL and lead until Ctrl-C; without "
                 "PROPOSAL, print each new leader", cmd_elect)
    elect.add_argument("name", help="the election's name (keys NAME/<lease id hex>)")
    elect.add_argument("proposal", nargs="?", default=None,
                       help="the value to lead with (none: observe)")
    elect.add_argument("--ttl", type=int, default=60, help="session lease TTL, seconds")

    config = sub.add_parser("config", help="service configuration").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    cget = leaf(config, "get", "a service's settings, or one setting's value", cmd_config_get)
    cget.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cget.add_argument("name", nargs="?", default=None, help="one setting (default: all)")
    cget.add_argument("--rev", type=int, default=0, help="as of this revision (0 = now)")
    cset = leaf(
        config,
        "set",
        "publish settings in one revision; VALUE is JSON, other text is taken as a string",
        cmd_config_set,
    )
    cset.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cset.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="settings to publish")
    cset.add_argument(
        "--delete", action="append", default=[], metavar="NAME", help="remove a setting"
    )
    cset.add_argument(
        "--expect-rev",
        type=int,
        default=None,
        help="publish only if the config did not change since this revision",
    )
    cwatch = leaf(config, "watch", "print each change of a service's config until Ctrl-C",
                  cmd_config_watch)
    cwatch.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cwatch.add_argument("--rev", type=int, default=0, help="start at this revision (0 = now)")
    chist = leaf(config, "history", "earlier versions of a service's config", cmd_config_history)
    chist.add_argument("service", help="the service (keys /config/SERVICE/...)")
    chist.add_argument("name", nargs="?", default=None, help="one setting (default: all)")
    crb = leaf(config, "rollback", "make a service's config what it was at --rev",
               cmd_config_rollback)
    crb.add_argument("service", help="the service (keys /config/SERVICE/...)")
    crb.add_argument("--rev", type=int, required=True, help="the revision to return to")

    services = sub.add_parser("services", help="registered service instances").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(services, "list", "list instances", cmd_services_list).add_argument(
        "service", nargs="?", default=None, help="one service (default: all)"
    )
    leaf(
        services,
        "watch",
        "print the instances (ADDED), then every change (ADDED/UPDATED/REMOVED) until Ctrl-C",
        cmd_services_watch,
    ).add_argument("service", nargs="?", default=None, help="one service (default: all)")

    node = leaf(sub, "node", "run one node of the cluster in cluster.toml", cmd_node)
    node.add_argument("--name", required=True, help="this node's name in the configuration")
    node.add_argument("--join", action="store_true",
                      help="this node was just added to a running cluster with `member add`")
    dev = leaf(sub, "dev", "run a single-node development registry", cmd_dev)
    dev.add_argument("--data-dir", default="default.raftreg", help="data directory")
    dev.add_argument("--listen", default="127.0.0.1:2379", help="client address host:port")
    dev.add_argument("--http", default="127.0.0.1:2381",
                     help="JSON gateway and /metrics host:port ('' for none)")
    secret = leaf(sub, "secret", "create a cluster secret file (mode 0600) if it is missing",
                  cmd_secret)
    secret.add_argument("file", help="the file to create, e.g. cluster.secret")
    return parser


def _lease_arg(text: str) -> int:
    try:
        return parse_lease_id(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- entry points ----------------------------------------------------------------------------

_SERVER_COMMANDS = frozenset({"node", "dev", "secret"})
_LOCAL_SUBCOMMANDS = frozenset({("snapshot", "status"), ("snapshot", "restore")})


def _is_local(ns: argparse.Namespace) -> bool:
    """Commands that run in this process without a client (servers, offline file tools)."""
    return ns.command in _SERVER_COMMANDS or (
        (ns.command, getattr(ns, "subcommand", None)) in _LOCAL_SUBCOMMANDS)


class _CannotConnect(Exception):
    """No endpoint accepted a connection within the dial timeout (exit status 3)."""


EXIT_CANNOT_CONNECT = 3
# Commands that report on each endpoint themselves, reachable or not.
_NO_DIAL_CHECK = frozenset({"endpoint"})


async def _dial_check(endpoints: Sequence[str], timeout: float) -> None:
    """Return once one endpoint accepts a TCP connection; `_CannotConnect` if none does within
    `timeout`. TLS and auth are the client's business: a refusal there is an error (exit 1)
    with the client's explanation, not "cannot connect"."""
    why = {ep: f"no answer within {timeout:g}s (--dial-timeout)" for ep in endpoints}

    async def dial(ep: str) -> None:
        try:
            host, port = split_hostport(ep.split("://", 1)[-1])
            _, writer = await asyncio.open_connection(host, port)
        except (OSError, RegistryError) as e:
            errno = getattr(e, "errno", None)
            why[ep] = os.strerror(errno).lower() if errno else str(e)
            raise
        writer.close()

    tasks = [asyncio.ensure_future(dial(ep)) for ep in endpoints]
    try:
        async with asyncio.timeout(timeout):
            for next_done in asyncio.as_completed(tasks):
                with contextlib.suppress(OSError, RegistryError):
                    await next_done
                    return
    except TimeoutError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    tried = "; ".join(f"{ep}: {reason}" for ep, reason in why.items())
    raise _CannotConnect(
        f"cannot connect to the registry ({tried}). Start the cluster of cluster.toml with "
        "scripts/start-cluster.sh, or a development registry with `raftreg dev`; "
        "--endpoints or RAFTREG_ENDPOINTS name another one.")


async def _run_client_command(ns: argparse.Namespace, ctx: _Ctx, dial_check: bool) -> int:
    func: Command = ns.func
    if dial_check and ns.command not in _NO_DIAL_CHECK:
        await _dial_check(ctx.endpoints, ns.dial_timeout)
    async with ctx.factory(ctx.endpoints, ctx.timeout) as client:
        return await func(client, ns, ctx)


def run(
    argv: Sequence[str],
    *,
    client_factory: ClientFactory = _default_factory,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`main` with injectable client factory and streams (for tests and embedding)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if ns.command is None:
        parser.print_help(err)
        return 2
    try:
        if ns.timeout <= 0:
            raise InvalidArgument("--timeout must be positive")
        factory = client_factory
        if _is_local(ns):
            endpoints = (
                list(normalize_endpoints(e for e in ns.endpoints.split(",") if e.strip()))
                if ns.endpoints
                else []
            )
        else:
            # The backend follows configuration: an etcd:// endpoint, RAFTREG_BACKEND, or the
            # [registry] table of --config (raftreg.client.etcd.backend).
            sel = select_backend(ns.endpoints or None, config_path=ns.config)
            endpoints = list(sel.endpoints)
            dev = None if ns.endpoints or _env("RAFTREG_ENDPOINTS", None) else running_dev()
            if dev is not None and sel.backend == "raftreg":
                endpoints = [dev]  # what `raftreg dev` in this directory serves
            if client_factory is _default_factory:
                factory = _secured_factory(sel.backend, ns)
        ctx = _Ctx(
            fmt=ns.write_out,
            endpoints=endpoints,
            timeout=ns.timeout,
            factory=factory,
            out=out,
            err=err,
            stdin=stdin or sys.stdin,
        )
        if _is_local(ns):
            server_func: Callable[[argparse.Namespace, _Ctx], int] = ns.func
            return server_func(ns, ctx)
        # over the network only: an injected factory (tests, embedding) has no endpoints to dial
        return asyncio.run(_run_client_command(ns, ctx, client_factory is _default_factory))
    except _CannotConnect as e:
        err.write(f"Error: {e}\n")
        return EXIT_CANNOT_CONNECT
    except RegistryError as e:
        err.write(f"Error: {e}\n")
        return 1
    except OSError as e:
        err.write(f"Error: {e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
