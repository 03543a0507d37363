"""What the commands print, and the context they print through.

`_Ctx` is what every command gets besides its client and arguments: the output format (one of
`FORMATS`), the endpoints, the command timeout, the client factory and the three streams, with
`print` / `json` / `table` writers; `Command` is the signature of every client command. The
formatters give etcdctl's shapes: `simple_lines` its line output, `format_table` and `kv_rows`
its bordered tables, `result_json`, `event_json` and `watch_json` etcd's JSON with its header
(keys and values base64-encoded as etcdctl does). `_interrupted` is how a long-running command
ends on Ctrl-C (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from raftreg.client.protocol import RegistryClient
from raftreg.client.resumable_watch import WatchBatch
from raftreg.common.types import DeleteResult, Event, KeyValue, PutResult, RangeResult, TxnResult

ClientFactory = Callable[[Sequence[str], float], RegistryClient]
OpResult = RangeResult | PutResult | DeleteResult | TxnResult

FORMATS = ("simple", "table", "json")


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


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


def _interrupted() -> int:
    """Ctrl-C: asyncio.run cancels the command's task; a long-running command ends cleanly."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return 0
