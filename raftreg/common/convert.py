"""Conversion between protobuf messages and the public value types.

raftreg.v1 mirrors etcd's rpc.proto message for message (names, field names and numbers,
oneofs), so what only reads or writes those shapes is written once here and serves both
protocols: `RequestWriter` writes the txn operations as requests of either generated module
(`RAFTREG` for raftreg.v1; `raftreg.client.etcd.client.ETCD` for etcd's), and `kv_from_pb`,
`event_from_pb` and the `*_result_from_pb` readers read a message of either module. What only
raftreg's server does (reading requests, writing results and events) is typed to raftreg.v1.
Conversion from protobuf validates what the wire allows but the types do not (unknown enum
values, a compare without its operand) and raises `InvalidArgument`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeVar

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


def _e(v: int) -> Any:
    """An enum value for a generated message field (the stubs want the enum's own type)."""
    return int(v)


_OPERAND_FIELD = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


# --- either protocol: reading key-values, events and results ----------------------------------
# `m` is a message of raftreg.v1 or of etcd's generated module (typed Any: they are distinct
# classes of one shape).


def kv_from_pb(m: Any) -> KeyValue:
    return KeyValue(m.key, m.create_revision, m.mod_revision, m.version, m.value, m.lease)


def event_from_pb(m: Any) -> Event:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(_enum(EventType, m.type, "event type"), kv_from_pb(m.kv), prev)


def _rev(header_revision: int, outer: int) -> int:
    # etcd leaves the headers of the responses nested in a txn empty: they take the txn's.
    # raftreg's server fills them with the txn's header, so both read the same.
    return header_revision or outer


def range_result_from_pb(m: Any, outer: int = 0) -> RangeResult:
    return RangeResult(
        _rev(m.header.revision, outer), tuple(kv_from_pb(kv) for kv in m.kvs), m.more, m.count
    )


def put_result_from_pb(m: Any, outer: int = 0) -> PutResult:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return PutResult(_rev(m.header.revision, outer), prev)


def delete_result_from_pb(m: Any, outer: int = 0) -> DeleteResult:
    return DeleteResult(
        _rev(m.header.revision, outer), m.deleted, tuple(kv_from_pb(kv) for kv in m.prev_kvs)
    )


def txn_result_from_pb(m: Any, outer: int = 0) -> TxnResult:
    rev = _rev(m.header.revision, outer)
    return TxnResult(rev, m.succeeded, tuple(_op_result_from_pb(x, rev) for x in m.responses))


def _op_result_from_pb(m: Any, outer: int) -> OpResult:
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


# --- either protocol: writing requests --------------------------------------------------------


class RequestWriter:
    """Writes the txn operations as request messages of `messages`, a generated module with
    etcd's request shapes (raftreg.v1's `raftreg_pb2` or etcd's own); every method returns a
    message of that module."""

    def __init__(self, messages: ModuleType) -> None:
        self._pb = messages

    def range(self, r: Range, serializable: bool = False) -> Any:
        return self._pb.RangeRequest(
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

    def put(self, p: Put) -> Any:
        return self._pb.PutRequest(
            key=p.key,
            value=p.value,
            lease=p.lease,
            prev_kv=p.prev_kv,
            ignore_value=p.ignore_value,
            ignore_lease=p.ignore_lease,
        )

    def delete(self, d: DeleteRange) -> Any:
        return self._pb.DeleteRangeRequest(key=d.key, range_end=d.range_end, prev_kv=d.prev_kv)

    def compare(self, c: Compare) -> Any:
        m = self._pb.Compare(
            key=c.key, target=_e(c.target), result=_e(c.result), range_end=c.range_end
        )
        setattr(m, _OPERAND_FIELD[c.target], c.operand)
        return m

    def op(self, op: Op) -> Any:
        if isinstance(op, Range):
            return self._pb.RequestOp(request_range=self.range(op))
        if isinstance(op, Put):
            return self._pb.RequestOp(request_put=self.put(op))
        if isinstance(op, DeleteRange):
            return self._pb.RequestOp(request_delete_range=self.delete(op))
        return self._pb.RequestOp(request_txn=self.txn(op))

    def txn(self, t: Txn) -> Any:
        return self._pb.TxnRequest(
            compare=[self.compare(c) for c in t.compare],
            success=[self.op(o) for o in t.success],
            failure=[self.op(o) for o in t.failure],
        )


RAFTREG = RequestWriter(pb)


# --- raftreg.v1 only: the server reads requests -----------------------------------------------


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


def put_from_pb(m: pb.PutRequest) -> Put:
    return Put(m.key, m.value, m.lease, m.prev_kv, m.ignore_value, m.ignore_lease)


def delete_from_pb(m: pb.DeleteRangeRequest) -> DeleteRange:
    return DeleteRange(m.key, m.range_end, m.prev_kv)


def compare_from_pb(m: pb.Compare) -> Compare:
    target = _enum(CompareTarget, m.target, "compare target")
    result = _enum(CompareResult, m.result, "compare result")
    name = _OPERAND_FIELD[target]
    which = m.WhichOneof("target_union")
    if which is not None and which != name:
        raise InvalidArgument(f"compare target {target.name} with a {which} operand")
    operand: bytes | int = getattr(m, name)
    return Compare(m.key, target, result, operand, m.range_end)


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


def txn_from_pb(m: pb.TxnRequest) -> Txn:
    return Txn(
        compare=tuple(compare_from_pb(c) for c in m.compare),
        success=tuple(op_from_pb(o) for o in m.success),
        failure=tuple(op_from_pb(o) for o in m.failure),
    )


# --- raftreg.v1 only: the server writes key-values, events and results ------------------------


def kv_to_pb(kv: KeyValue) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


def event_to_pb(e: Event, with_prev_kv: bool = True) -> pb.Event:
    out = pb.Event(type=_e(e.type), kv=kv_to_pb(e.kv))
    if with_prev_kv and e.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(e.prev_kv))
    return out


def range_result_to_pb(r: RangeResult, header: pb.ResponseHeader) -> pb.RangeResponse:
    return pb.RangeResponse(
        header=header, kvs=[kv_to_pb(kv) for kv in r.kvs], more=r.more, count=r.count
    )


def put_result_to_pb(r: PutResult, header: pb.ResponseHeader) -> pb.PutResponse:
    out = pb.PutResponse(header=header)
    if r.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(r.prev_kv))
    return out


def delete_result_to_pb(r: DeleteResult, header: pb.ResponseHeader) -> pb.DeleteRangeResponse:
    return pb.DeleteRangeResponse(
        header=header, deleted=r.deleted, prev_kvs=[kv_to_pb(kv) for kv in r.prev_kvs]
    )


def txn_result_to_pb(r: TxnResult, header: pb.ResponseHeader) -> pb.TxnResponse:
    return pb.TxnResponse(
        header=header,
        succeeded=r.succeeded,
        responses=[_op_result_to_pb(x, header) for x in r.responses],
    )


def _op_result_to_pb(r: OpResult, header: pb.ResponseHeader) -> pb.ResponseOp:
    if isinstance(r, RangeResult):
        return pb.ResponseOp(response_range=range_result_to_pb(r, header))
    if isinstance(r, PutResult):
        return pb.ResponseOp(response_put=put_result_to_pb(r, header))
    if isinstance(r, DeleteResult):
        return pb.ResponseOp(response_delete_range=delete_result_to_pb(r, header))
    return pb.ResponseOp(response_txn=txn_result_to_pb(r, header))
