"""Conversion between raftreg.v1 protobuf messages and the store's domain types.

Both directions live here: the server turns requests into commands and results into responses;
the gRPC client does the reverse. Conversion from protobuf validates what the wire allows but
the domain does not (unknown enum values, a compare without an operand) and raises
`InvalidArgument`.
"""

from __future__ import annotations

from typing import TypeVar

from raftreg.common.types import (
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
from raftreg.errors import InvalidArgument
from raftreg.pb import raftreg_pb2 as pb

Op = Range | Put | DeleteRange | Txn
OpResult = RangeResult | PutResult | DeleteResult | TxnResult


E = TypeVar("E", SortOrder, SortTarget, CompareResult, CompareTarget, EventType)


def _enum(cls: type[E], value: int, what: str) -> E:
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgument(f"unknown {what} {value}") from None


# --- key-values and events -----------------------------------------------------------------


def kv_to_pb(kv: KeyValue) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


def kv_from_pb(m: pb.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.create_revision, m.mod_revision, m.version, m.value, m.lease)


def event_to_pb(e: Event, with_prev_kv: bool = True) -> pb.Event:
    out = pb.Event(type=int(e.type), kv=kv_to_pb(e.kv))  # type: ignore[arg-type]
    if with_prev_kv and e.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(e.prev_kv))
    return out


def event_from_pb(m: pb.Event) -> Event:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(_enum(EventType, m.type, "event type"), kv_from_pb(m.kv), prev)


# --- requests ------------------------------------------------------------------------------


def range_from_pb(m: pb.RangeRequest) -> Range:
    return Range(
        key=m.key,
        range_end=m.range_end,
        revision=m.revision,
        limit=m.limit,
        sort_order=_enum(SortOrder, m.sort_order, "sort order"),
        sort_target=_enum(SortTarget, m.sort_target, "sort target"),
        keys_only=m.keys_only,
        count_only=m.count_only,
        min_mod_revision=m.min_mod_revision,
        max_mod_revision=m.max_mod_revision,
        min_create_revision=m.min_create_revision,
        max_create_revision=m.max_create_revision,
    )


def range_to_pb(r: Range, serializable: bool = False) -> pb.RangeRequest:
    return pb.RangeRequest(
        key=r.key,
        range_end=r.range_end,
        revision=r.revision,
        limit=r.limit,
        sort_order=int(r.sort_order),  # type: ignore[arg-type]
        sort_target=int(r.sort_target),  # type: ignore[arg-type]
        serializable=serializable,
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def put_from_pb(m: pb.PutRequest) -> Put:
    return Put(m.key, m.value, m.lease, m.prev_kv, m.ignore_value, m.ignore_lease)


def put_to_pb(p: Put) -> pb.PutRequest:
    return pb.PutRequest(
        key=p.key,
        value=p.value,
        lease=p.lease,
        prev_kv=p.prev_kv,
        ignore_value=p.ignore_value,
        ignore_lease=p.ignore_lease,
    )


def delete_from_pb(m: pb.DeleteRangeRequest) -> DeleteRange:
    return DeleteRange(m.key, m.range_end, m.prev_kv)


def delete_to_pb(d: DeleteRange) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(key=d.key, range_end=d.range_end, prev_kv=d.prev_kv)


_OPERAND_FIELD = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


def compare_from_pb(m: pb.Compare) -> Compare:
    target = _enum(CompareTarget, m.target, "compare target")
    result = _enum(CompareResult, m.result, "compare result")
    name = _OPERAND_FIELD[target]
    which = m.WhichOneof("target_union")
    if which is not None and which != name:
        raise InvalidArgument(f"compare target {target.name} with a {which} operand")
    operand: bytes | int = getattr(m, name)
    return Compare(m.key, target, result, operand, m.range_end)


def compare_to_pb(c: Compare) -> pb.Compare:
    m = pb.Compare(
        key=c.key,
        target=int(c.target),  # type: ignore[arg-type]
        result=int(c.result),  # type: ignore[arg-type]
        range_end=c.range_end,
    )
    setattr(m, _OPERAND_FIELD[c.target], c.operand)
    return m


def op_from_pb(m: pb.RequestOp) -> Op:
    which = m.WhichOneof("request")
    if which == "request_range":
        return range_from_pb(m.request_range)
    if which == "request_put":
        return put_from_pb(m.request_put)
    if which == "request_delete_range":
        return delete_from_pb(m.request_delete_range)
    if which == "request_txn":
        return txn_from_pb(m.request_txn)
    raise InvalidArgument("empty request op in txn")


def op_to_pb(op: Op) -> pb.RequestOp:
    if isinstance(op, Range):
        return pb.RequestOp(request_range=range_to_pb(op))
    if isinstance(op, Put):
        return pb.RequestOp(request_put=put_to_pb(op))
    if isinstance(op, DeleteRange):
        return pb.RequestOp(request_delete_range=delete_to_pb(op))
    return pb.RequestOp(request_txn=txn_to_pb(op))


def txn_from_pb(m: pb.TxnRequest) -> Txn:
    return Txn(
        compare=tuple(compare_from_pb(c) for c in m.compare),
        success=tuple(op_from_pb(o) for o in m.success),
        failure=tuple(op_from_pb(o) for o in m.failure),
    )


def txn_to_pb(t: Txn) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[compare_to_pb(c) for c in t.compare],
        success=[op_to_pb(o) for o in t.success],
        failure=[op_to_pb(o) for o in t.failure],
    )


# --- results -------------------------------------------------------------------------------


def range_result_to_pb(r: RangeResult, header: pb.ResponseHeader) -> pb.RangeResponse:
    return pb.RangeResponse(
        header=header, kvs=[kv_to_pb(kv) for kv in r.kvs], more=r.more, count=r.count
    )


def range_result_from_pb(m: pb.RangeResponse) -> RangeResult:
    return RangeResult(
        m.header.revision, tuple(kv_from_pb(kv) for kv in m.kvs), m.more, m.count
    )


def put_result_to_pb(r: PutResult, header: pb.ResponseHeader) -> pb.PutResponse:
    out = pb.PutResponse(header=header)
    if r.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(r.prev_kv))
    return out


def put_result_from_pb(m: pb.PutResponse) -> PutResult:
    return PutResult(m.header.revision, kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None)


def delete_result_to_pb(r: DeleteResult, header: pb.ResponseHeader) -> pb.DeleteRangeResponse:
    return pb.DeleteRangeResponse(
        header=header, deleted=r.deleted, prev_kvs=[kv_to_pb(kv) for kv in r.prev_kvs]
    )


def delete_result_from_pb(m: pb.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(m.header.revision, m.deleted, tuple(kv_from_pb(kv) for kv in m.prev_kvs))


def txn_result_to_pb(r: TxnResult, header: pb.ResponseHeader) -> pb.TxnResponse:
    return pb.TxnResponse(
        header=header,
        succeeded=r.succeeded,
        responses=[_op_result_to_pb(x, header) for x in r.responses],
    )


def txn_result_from_pb(m: pb.TxnResponse) -> TxnResult:
    return TxnResult(
        m.header.revision, m.succeeded, tuple(_op_result_from_pb(x) for x in m.responses)
    )


def _op_result_to_pb(r: OpResult, header: pb.ResponseHeader) -> pb.ResponseOp:
    if isinstance(r, RangeResult):
        return pb.ResponseOp(response_range=range_result_to_pb(r, header))
    if isinstance(r, PutResult):
        return pb.ResponseOp(response_put=put_result_to_pb(r, header))
    if isinstance(r, DeleteResult):
        return pb.ResponseOp(response_delete_range=delete_result_to_pb(r, header))
    return pb.ResponseOp(response_txn=txn_result_to_pb(r, header))


def _op_result_from_pb(m: pb.ResponseOp) -> OpResult:
    which = m.WhichOneof("response")
    if which == "response_range":
        return range_result_from_pb(m.response_range)
    if which == "response_put":
        return put_result_from_pb(m.response_put)
    if which == "response_delete_range":
        return delete_result_from_pb(m.response_delete_range)
    if which == "response_txn":
        return txn_result_from_pb(m.response_txn)
    raise InvalidArgument("empty response op in txn")
