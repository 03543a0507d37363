"""Conversion between etcd v3 messages (`raftreg.client.etcd.pb`) and raftreg's domain types.

raftreg's enums (`SortOrder`, `SortTarget`, `CompareResult`, `CompareTarget`, `EventType`,
`WatchFilter`) use etcd's numbers, so they convert by value. Nothing from `raftreg.client.etcd.pb`
leaves the `raftreg.client.etcd` package: callers only ever see the domain types.
"""

from __future__ import annotations

from typing import Any

from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.common.types import (
    Compare,
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
    Txn,
    TxnResult,
)
from raftreg.errors import InvalidArgument

Op = Range | Put | DeleteRange | Txn
OpResult = RangeResult | PutResult | DeleteResult | TxnResult

_OPERAND_FIELD = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


def _e(v: int) -> Any:
    """An enum value for a generated message field (the stubs want the enum's own type)."""
    return int(v)


def kv_from_pb(m: pb.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.create_revision, m.mod_revision, m.version, m.value, m.lease)


def event_from_pb(m: pb.Event) -> Event:
    try:
        kind = EventType(m.type)
    except ValueError:
        raise InvalidArgument(f"unknown event type {m.type}") from None
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(kind, kv_from_pb(m.kv), prev)


def range_to_pb(r: Range, serializable: bool = False) -> pb.RangeRequest:
    return pb.RangeRequest(
        key=r.key,
        range_end=r.range_end,
        revision=r.revision,
        limit=r.limit,
        sort_order=_e(r.sort_order),
        sort_target=_e(r.sort_target),
        serializable=serializable,
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def put_to_pb(p: Put) -> pb.PutRequest:
    return pb.PutRequest(
        key=p.key,
        value=p.value,
        lease=p.lease,
        prev_kv=p.prev_kv,
        ignore_value=p.ignore_value,
        ignore_lease=p.ignore_lease,
    )


def delete_to_pb(d: DeleteRange) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(key=d.key, range_end=d.range_end, prev_kv=d.prev_kv)


def compare_to_pb(c: Compare) -> pb.Compare:
    m = pb.Compare(
        key=c.key, target=_e(c.target), result=_e(c.result), range_end=c.range_end
    )
    setattr(m, _OPERAND_FIELD[c.target], c.operand)
    return m


def op_to_pb(op: Op) -> pb.RequestOp:
    if isinstance(op, Range):
        return pb.RequestOp(request_range=range_to_pb(op))
    if isinstance(op, Put):
        return pb.RequestOp(request_put=put_to_pb(op))
    if isinstance(op, DeleteRange):
        return pb.RequestOp(request_delete_range=delete_to_pb(op))
    return pb.RequestOp(request_txn=txn_to_pb(op))


def txn_to_pb(t: Txn) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[compare_to_pb(c) for c in t.compare],
        success=[op_to_pb(o) for o in t.success],
        failure=[op_to_pb(o) for o in t.failure],
    )


def _rev(header_revision: int, outer: int) -> int:
    # etcd leaves the headers of the responses nested in a txn empty: they take the txn's.
    return header_revision or outer


def range_result_from_pb(m: pb.RangeResponse, outer: int = 0) -> RangeResult:
    return RangeResult(
        _rev(m.header.revision, outer), tuple(kv_from_pb(kv) for kv in m.kvs), m.more, m.count
    )


def put_result_from_pb(m: pb.PutResponse, outer: int = 0) -> PutResult:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return PutResult(_rev(m.header.revision, outer), prev)


def delete_result_from_pb(m: pb.DeleteRangeResponse, outer: int = 0) -> DeleteResult:
    return DeleteResult(
        _rev(m.header.revision, outer), m.deleted, tuple(kv_from_pb(kv) for kv in m.prev_kvs)
    )


def txn_result_from_pb(m: pb.TxnResponse, outer: int = 0) -> TxnResult:
    rev = _rev(m.header.revision, outer)
    return TxnResult(rev, m.succeeded, tuple(_op_result_from_pb(x, rev) for x in m.responses))


def _op_result_from_pb(m: pb.ResponseOp, outer: int) -> OpResult:
    which = m.WhichOneof("response")
    if which == "response_range":
        return range_result_from_pb(m.response_range, outer)
    if which == "response_put":
        return put_result_from_pb(m.response_put, outer)
    if which == "response_delete_range":
        return delete_result_from_pb(m.response_delete_range, outer)
    if which == "response_txn":
        return txn_result_from_pb(m.response_txn, outer)
    raise InvalidArgument("empty response op in txn")
