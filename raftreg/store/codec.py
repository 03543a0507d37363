"""The store's one msgpack codec: requests and the plain shapes snapshots are built from.

One file on purpose (over 500 lines): it is the replicated log's and the snapshots' whole wire
format, and every tag table, encoder and its decoder sit side by side here so that no tag can
be added, renumbered or reused without the others in view.

Every byte string the store accepts goes through `unpack` here and nowhere else. Decoders check
shapes and exact types (`bool` is not an `int`, `str` is not `bytes`) and raise
`raftreg.errors.InvalidArgument` — never anything else — on malformed, foreign or unknown input.
They check structure only; semantic checks (empty keys, sizes, limits) are `validate`'s job.

Wire shapes (msgpack arrays, first element a small-int tag):
    request  [1, now_ms, client_id, seq, command]
    command  [tag, field, ...] in dataclass field order (the `_PUT`... constants)
    kv       [key, create_revision, mod_revision, version, value, lease]
The tags are part of the replicated log format: never renumber them, and never reuse a retired
one (`_RETIRED`: defined once, never written by any release; decoding one is an error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgpack

from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    KeyValue,
    LeaseGrantResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)
from raftreg.errors import InvalidArgument
from raftreg.store.commands import (
    Command,
    Compact,
    Done,
    ExpireClients,
    Failure,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    MemberUpdate,
    Request,
    Result,
)

__all__ = [
    "MAX_TXN_DEPTH",
    "ArrayHeader",
    "decode_request",
    "encode_request",
    "guard",
    "kv_from_obj",
    "kv_to_obj",
    "pack",
    "pack_chunks",
    "read_bool",
    "read_bytes",
    "read_int",
    "read_list",
    "read_str",
    "result_from_obj",
    "result_to_obj",
    "unpack",
]

# Deepest Txn nesting (the outermost Txn is depth 1) the codec and `validate` accept. Bounds the
# decoder's recursion so hostile input cannot raise RecursionError.
MAX_TXN_DEPTH: Final = 32

_REQUEST: Final = 1

_PUT: Final = 1
_DELETE: Final = 2
_TXN: Final = 3
_COMPACT: Final = 4
_LEASE_GRANT: Final = 5
_LEASE_REVOKE: Final = 6
_LEASE_EXPIRE: Final = 7
_EXPIRE_CLIENTS: Final = 9
_RANGE: Final = 11
_MEMBER_UPDATE: Final = 13
_LEADER_EPOCH: Final = 12
_LEASE_CHECKPOINT: Final = 14
# Tags of commands that were defined but never proposed, and of the never-written batch envelope.
_RETIRED: Final = {8: "lease checkpoint", 10: "barrier"}
_RETIRED_ENVELOPES: Final = {2: "batch"}

_RANGE_RESULT: Final = 1
_PUT_RESULT: Final = 2
_DELETE_RESULT: Final = 3
_TXN_RESULT: Final = 4
_LEASE_GRANT_RESULT: Final = 5
_DONE: Final = 6
_FAILURE: Final = 7

_T = TypeVar("_T")
TxnOp = Range | Put | DeleteRange | Txn


# ---------------------------------------------------------------------------------------------
# msgpack


def pack(obj: object) -> bytes:
    """msgpack-encode plain data (lists, ints, bytes, str, bool, None). Deterministic."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot encode: {exc}") from None
    return data


def pack_chunks(parts: Iterable[object | ArrayHeader]) -> Iterator[bytes]:
    """`pack` of a large structure, one part at a time: the same bytes as `pack` of the
    nested lists the `ArrayHeader`s open, but each call into msgpack is short, so a thread
    encoding a large snapshot never holds the interpreter for long."""
    packer = msgpack.Packer(use_bin_type=True)
    try:
        for part in parts:
            if isinstance(part, ArrayHeader):
                yield packer.pack_array_header(part.length)
            else:
                yield packer.pack(part)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot encode: {exc}") from None


@dataclass(frozen=True, slots=True)
class ArrayHeader:
    """In `pack_chunks`: a list of `length` items, the next `length` parts."""

    length: int


def unpack(data: bytes) -> Any:
    """The store's only msgpack decoder. Raises InvalidArgument on anything but one well-formed
    msgpack object (trailing bytes included)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument(f"expected bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception:  # msgpack raises a zoo of types (ExtraData, ValueError, StackError, ...)
        raise InvalidArgument("malformed msgpack data") from None


def guard(fn: Callable[[], _T], what: str) -> _T:
    """Run a decoder; any exception other than InvalidArgument is a decoder bug on hostile
    input and is reported as InvalidArgument too, keeping the 'never anything else' contract."""
    try:
        return fn()
    except InvalidArgument:
        raise
    except Exception:
        raise InvalidArgument(f"malformed {what}") from None


# ---------------------------------------------------------------------------------------------
# exact-type field readers


def read_list(x: object, what: str, n: int | None = None) -> list[Any]:
    if type(x) is not list or (n is not None and len(x) != n):
        raise InvalidArgument(f"malformed {what}")
    return x


def read_int(x: object, what: str) -> int:
    if type(x) is not int:
        raise InvalidArgument(f"malformed {what}: expected an integer")
    return x


def read_bytes(x: object, what: str) -> bytes:
    if type(x) is not bytes:
        raise InvalidArgument(f"malformed {what}: expected bytes")
    return x


def read_bool(x: object, what: str) -> bool:
    if type(x) is not bool:
        raise InvalidArgument(f"malformed {what}: expected a boolean")
    return x


def read_str(x: object, what: str) -> str:
    if type(x) is not str:
        raise InvalidArgument(f"malformed {what}: expected a string")
    return x


def _tagged(x: object, what: str) -> tuple[int, list[Any]]:
    items = read_list(x, what)
    if not items:
        raise InvalidArgument(f"malformed {what}: empty")
    return read_int(items[0], f"{what} tag"), items


def _arity(items: list[Any], n: int, what: str) -> None:
    if len(items) != n:
        raise InvalidArgument(f"malformed {what}: expected {n} fields, got {len(items)}")


# ---------------------------------------------------------------------------------------------
# key-values


def kv_to_obj(kv: KeyValue) -> list[object]:
    return [kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease]


def kv_from_obj(x: object) -> KeyValue:
    items = read_list(x, "key-value", 6)
    return KeyValue(
        key=read_bytes(items[0], "kv key"),
        create_revision=read_int(items[1], "kv create_revision"),
        mod_revision=read_int(items[2], "kv mod_revision"),
        version=read_int(items[3], "kv version"),
        value=read_bytes(items[4], "kv value"),
        lease=read_int(items[5], "kv lease"),
    )


def _opt_kv_from_obj(x: object) -> KeyValue | None:
    return None if x is None else kv_from_obj(x)


# ---------------------------------------------------------------------------------------------
# commands


def _compare_to_obj(c: Compare) -> list[object]:
    operand = c.operand if isinstance(c.operand, bytes) else int(c.operand)
    return [c.key, int(c.target), int(c.result), operand, c.range_end]


def _compare_from_obj(x: object) -> Compare:
    items = read_list(x, "compare", 5)
    operand = items[3]
    if type(operand) is not bytes and type(operand) is not int:
        raise InvalidArgument("malformed compare operand: expected bytes or an integer")
    try:
        target = CompareTarget(read_int(items[1], "compare target"))
        result = CompareResult(read_int(items[2], "compare result"))
    except ValueError:
        raise InvalidArgument("unknown compare target or result") from None
    return Compare(
        key=read_bytes(items[0], "compare key"),
        target=target,
        result=result,
        operand=operand,
        range_end=read_bytes(items[4], "compare range_end"),
    )


def _command_to_obj(cmd: Command | Range) -> list[object]:
    match cmd:
        case Put():
            return [
                _PUT,
                cmd.key,
                cmd.value,
                int(cmd.lease),
                bool(cmd.prev_kv),
                bool(cmd.ignore_value),
                bool(cmd.ignore_lease),
            ]
        case DeleteRange():
            return [_DELETE, cmd.key, cmd.range_end, bool(cmd.prev_kv)]
        case Range():
            obj: list[object] = [
                _RANGE,
                cmd.key,
                cmd.range_end,
                int(cmd.revision),
                int(cmd.limit),
                int(cmd.sort_order),
                int(cmd.sort_target),
                bool(cmd.keys_only),
                bool(cmd.count_only),
            ]
            if cmd.filtered:  # nine items without filters: the encoding entries had before
                obj += [int(cmd.min_mod_revision), int(cmd.max_mod_revision),
                        int(cmd.min_create_revision), int(cmd.max_create_revision)]
            return obj
        case Txn():
            return [
                _TXN,
                [_compare_to_obj(c) for c in cmd.compare],
                [_command_to_obj(op) for op in cmd.success],
                [_command_to_obj(op) for op in cmd.failure],
            ]
        case Compact():
            return [_COMPACT, int(cmd.revision)]
        case LeaseGrant():
            return [_LEASE_GRANT, int(cmd.id), int(cmd.ttl)]
        case LeaseRevoke():
            return [_LEASE_REVOKE, int(cmd.id)]
        case LeaseExpire():
            return [_LEASE_EXPIRE, [int(i) for i in cmd.ids], int(cmd.term)]
        case LeaderEpoch():
            return [_LEADER_EPOCH, int(cmd.term)]
        case LeaseCheckpoint():
            return [_LEASE_CHECKPOINT, [[int(i), int(ms)] for i, ms in cmd.checkpoints],
                    int(cmd.term)]
        case ExpireClients():
            return [_EXPIRE_CLIENTS, int(cmd.idle_before_ms)]
        case MemberUpdate():
            return [_MEMBER_UPDATE, int(cmd.id), cmd.name, cmd.peer, cmd.client, bool(cmd.removed)]
    raise InvalidArgument(f"cannot encode {type(cmd).__name__}: not a command")


def _op_from_obj(x: object, depth: int) -> TxnOp:
    """A Txn branch operation: Range, Put, DeleteRange or a nested Txn."""
    tag, items = _tagged(x, "txn operation")
    if tag == _RANGE:
        if len(items) != 13:
            _arity(items, 9, "range")
        bounds = [read_int(v, "range revision bound") for v in items[9:13]] or [0, 0, 0, 0]
        try:
            sort_order = SortOrder(read_int(items[5], "range sort_order"))
            sort_target = SortTarget(read_int(items[6], "range sort_target"))
        except ValueError:
            raise InvalidArgument("unknown range sort_order or sort_target") from None
        return Range(
            key=read_bytes(items[1], "range key"),
            range_end=read_bytes(items[2], "range range_end"),
            revision=read_int(items[3], "range revision"),
            limit=read_int(items[4], "range limit"),
            sort_order=sort_order,
            sort_target=sort_target,
            keys_only=read_bool(items[7], "range keys_only"),
            count_only=read_bool(items[8], "range count_only"),
            min_mod_revision=bounds[0],
            max_mod_revision=bounds[1],
            min_create_revision=bounds[2],
            max_create_revision=bounds[3],
        )
    if tag in (_PUT, _DELETE, _TXN):
        cmd = _command_from_obj(x, depth)
        assert isinstance(cmd, Put | DeleteRange | Txn)
        return cmd
    raise InvalidArgument(f"unknown txn operation tag {tag}")


def _command_from_obj(x: object, depth: int = 0) -> Command:
    tag, items = _tagged(x, "command")
    if tag == _PUT:
        _arity(items, 7, "put")
        return Put(
            key=read_bytes(items[1], "put key"),
            value=read_bytes(items[2], "put value"),
            lease=read_int(items[3], "put lease"),
            prev_kv=read_bool(items[4], "put prev_kv"),
            ignore_value=read_bool(items[5], "put ignore_value"),
            ignore_lease=read_bool(items[6], "put ignore_lease"),
        )
    if tag == _DELETE:
        _arity(items, 4, "delete_range")
        return DeleteRange(
            key=read_bytes(items[1], "delete key"),
            range_end=read_bytes(items[2], "delete range_end"),
            prev_kv=read_bool(items[3], "delete prev_kv"),
        )
    if tag == _TXN:
        _arity(items, 4, "txn")
        if depth + 1 > MAX_TXN_DEPTH:
            raise InvalidArgument(f"txn nested deeper than {MAX_TXN_DEPTH}")
        return Txn(
            compare=tuple(_compare_from_obj(c) for c in read_list(items[1], "txn compare")),
            success=tuple(_op_from_obj(o, depth + 1) for o in read_list(items[2], "txn success")),
            failure=tuple(_op_from_obj(o, depth + 1) for o in read_list(items[3], "txn failure")),
        )
    if tag == _COMPACT:
        _arity(items, 2, "compact")
        return Compact(revision=read_int(items[1], "compact revision"))
    if tag == _LEASE_GRANT:
        _arity(items, 3, "lease_grant")
        return LeaseGrant(id=read_int(items[1], "lease id"), ttl=read_int(items[2], "lease ttl"))
    if tag == _LEASE_REVOKE:
        _arity(items, 2, "lease_revoke")
        return LeaseRevoke(id=read_int(items[1], "lease id"))
    if tag == _LEASE_EXPIRE:
        _arity(items, 3, "lease_expire")
        return LeaseExpire(
            ids=tuple(read_int(i, "lease id") for i in read_list(items[1], "lease ids")),
            term=read_int(items[2], "lease_expire term"),
        )
    if tag == _LEADER_EPOCH:
        _arity(items, 2, "leader_epoch")
        return LeaderEpoch(term=read_int(items[1], "leader_epoch term"))
    if tag == _LEASE_CHECKPOINT:
        _arity(items, 3, "lease_checkpoint")
        pairs = [read_list(p, "lease checkpoint", 2)
                 for p in read_list(items[1], "lease checkpoints")]
        return LeaseCheckpoint(
            checkpoints=tuple((read_int(i, "lease id"), read_int(ms, "lease remaining_ms"))
                              for i, ms in pairs),
            term=read_int(items[2], "lease_checkpoint term"),
        )
    if tag == _EXPIRE_CLIENTS:
        _arity(items, 2, "expire_clients")
        return ExpireClients(idle_before_ms=read_int(items[1], "idle_before_ms"))
    if tag == _MEMBER_UPDATE:
        _arity(items, 6, "member_update")
        return MemberUpdate(
            id=read_int(items[1], "member id"),
            name=read_str(items[2], "member name"),
            peer=read_str(items[3], "member peer"),
            client=read_str(items[4], "member client"),
            removed=read_bool(items[5], "member removed"),
        )
    if tag in _RETIRED:
        raise InvalidArgument(f"retired command tag {tag} ({_RETIRED[tag]}): no longer decoded")
    raise InvalidArgument(f"unknown command tag {tag}")


# ---------------------------------------------------------------------------------------------
# requests


def _request_to_obj(r: Request) -> list[object]:
    if not isinstance(r, Request):
        raise InvalidArgument(f"cannot encode {type(r).__name__}: not a Request")
    return [_REQUEST, int(r.now_ms), int(r.client_id), int(r.seq), _command_to_obj(r.command)]


def _request_from_obj(x: object) -> Request:
    tag, items = _tagged(x, "request")
    if tag in _RETIRED_ENVELOPES:
        raise InvalidArgument(
            f"retired envelope tag {tag} ({_RETIRED_ENVELOPES[tag]}): no longer decoded")
    if tag != _REQUEST:
        raise InvalidArgument(f"not a request (tag {tag})")
    _arity(items, 5, "request")
    return Request(
        command=_command_from_obj(items[4]),
        now_ms=read_int(items[1], "request now_ms"),
        client_id=read_int(items[2], "request client_id"),
        seq=read_int(items[3], "request seq"),
    )


def encode_request(r: Request) -> bytes:
    return pack(_request_to_obj(r))


def decode_request(b: bytes) -> Request:
    """Inverse of `encode_request`. Raises InvalidArgument on malformed/unknown input (a batch
    included), never anything else."""
    obj = unpack(b)
    return guard(lambda: _request_from_obj(obj), "request")


# ---------------------------------------------------------------------------------------------
# results (snapshots store the request-identity table's remembered results)


def result_to_obj(r: Result) -> list[object]:
    match r:
        case RangeResult():
            return [_RANGE_RESULT, r.revision, [kv_to_obj(kv) for kv in r.kvs], r.more, r.count]
        case PutResult():
            prev = None if r.prev_kv is None else kv_to_obj(r.prev_kv)
            return [_PUT_RESULT, r.revision, prev]
        case DeleteResult():
            return [_DELETE_RESULT, r.revision, r.deleted, [kv_to_obj(kv) for kv in r.prev_kvs]]
        case TxnResult():
            return [_TXN_RESULT, r.revision, r.succeeded, [result_to_obj(x) for x in r.responses]]
        case LeaseGrantResult():
            return [_LEASE_GRANT_RESULT, r.revision, r.id, r.ttl]
        case Done():
            return [_DONE, r.revision]
        case Failure():
            return [_FAILURE, r.revision, r.kind, r.message, r.compact_revision]
    raise InvalidArgument(f"cannot encode {type(r).__name__}: not a result")


def result_from_obj(x: object, depth: int = 0) -> Result:
    tag, items = _tagged(x, "result")
    if tag == _RANGE_RESULT:
        _arity(items, 5, "range result")
        return RangeResult(
            revision=read_int(items[1], "revision"),
            kvs=tuple(kv_from_obj(kv) for kv in read_list(items[2], "kvs")),
            more=read_bool(items[3], "more"),
            count=read_int(items[4], "count"),
        )
    if tag == _PUT_RESULT:
        _arity(items, 3, "put result")
        return PutResult(
            revision=read_int(items[1], "revision"), prev_kv=_opt_kv_from_obj(items[2])
        )
    if tag == _DELETE_RESULT:
        _arity(items, 4, "delete result")
        return DeleteResult(
            revision=read_int(items[1], "revision"),
            deleted=read_int(items[2], "deleted"),
            prev_kvs=tuple(kv_from_obj(kv) for kv in read_list(items[3], "prev_kvs")),
        )
    if tag == _TXN_RESULT:
        _arity(items, 4, "txn result")
        if depth + 1 > MAX_TXN_DEPTH:
            raise InvalidArgument(f"txn result nested deeper than {MAX_TXN_DEPTH}")
        responses: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
        for item in read_list(items[3], "responses"):
            sub = result_from_obj(item, depth + 1)
            if not isinstance(sub, RangeResult | PutResult | DeleteResult | TxnResult):
                raise InvalidArgument("malformed txn result: unexpected response type")
            responses.append(sub)
        return TxnResult(
            revision=read_int(items[1], "revision"),
            succeeded=read_bool(items[2], "succeeded"),
            responses=tuple(responses),
        )
    if tag == _LEASE_GRANT_RESULT:
        _arity(items, 4, "lease grant result")
        return LeaseGrantResult(
            revision=read_int(items[1], "revision"),
            id=read_int(items[2], "lease id"),
            ttl=read_int(items[3], "lease ttl"),
        )
    if tag == _DONE:
        _arity(items, 2, "done")
        return Done(revision=read_int(items[1], "revision"))
    if tag == _FAILURE:
        _arity(items, 5, "failure")
        return Failure(
            revision=read_int(items[1], "revision"),
            kind=read_str(items[2], "failure kind"),
            message=read_str(items[3], "failure message"),
            compact_revision=read_int(items[4], "compact_revision"),
        )
    raise InvalidArgument(f"unknown result tag {tag}")
