"""Txn compares and the txn path, evaluated as etcd does.

etcd decides every compare of a txn — nested txns included — against the state before the txn
runs (`compareToPath`), then checks and executes the chosen branches. The path is the list of
compare outcomes in depth-first pre-order over the chosen branches; checking and executing
consume it in the same order.
"""

from __future__ import annotations

from raftreg.common.types import Compare, CompareResult, CompareTarget, KeyValue, Txn
from raftreg.store.mvcc import KeySpace

__all__ = ["compare_holds", "txn_path"]


def _field(c: Compare, kv: KeyValue | None) -> int:
    if kv is None:
        return 0
    match c.target:
        case CompareTarget.VERSION:
            return kv.version
        case CompareTarget.CREATE:
            return kv.create_revision
        case CompareTarget.MOD:
            return kv.mod_revision
        case _:
            return kv.lease


def _holds(c: Compare, kv: KeyValue | None) -> bool:
    if c.target == CompareTarget.VALUE:
        assert isinstance(c.operand, bytes)  # validate() guarantees operand types
        value = b"" if kv is None else kv.value
        order = (value > c.operand) - (value < c.operand)
    else:
        assert isinstance(c.operand, int)
        field = _field(c, kv)
        order = (field > c.operand) - (field < c.operand)
    match c.result:
        case CompareResult.EQUAL:
            return order == 0
        case CompareResult.NOT_EQUAL:
            return order != 0
        case CompareResult.GREATER:
            return order > 0
        case _:
            return order < 0


def compare_holds(ks: KeySpace, c: Compare) -> bool:
    """True iff `c` holds for every live key it selects at the newest revision. No live key:
    VALUE compares are false (etcd cannot tell a missing value from b""); the others compare
    against zeros (version/create/mod/lease 0)."""
    kvs = ks.range(c.key, c.range_end)
    if not kvs:
        return c.target != CompareTarget.VALUE and _holds(c, None)
    return all(_holds(c, kv) for kv in kvs)


def txn_path(ks: KeySpace, t: Txn) -> list[bool]:
    ok = all(compare_holds(ks, c) for c in t.compare)
    path = [ok]
    for op in t.success if ok else t.failure:
        if isinstance(op, Txn):
            path.extend(txn_path(ks, op))
    return path
