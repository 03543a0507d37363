"""Static validation of commands, as etcd's API layer does it before proposing.

Static means: the verdict depends only on the command and the store's configured limits, never
on the store's state, so the API can reject early and every replica reaches the same verdict in
`apply`. Every rejection is an `InvalidArgument` with etcd's message where etcd has one.
"""

from __future__ import annotations

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
from raftreg.store.codec import MAX_TXN_DEPTH
from raftreg.store.commands import (
    Compact,
    ExpireClients,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    MemberUpdate,
)

__all__ = ["validate_command", "validate_range"]

ALL_KEYS = b"\0"  # as range_end: every key >= key

# A half-open key interval [start, end); end None = unbounded.
_Interval = tuple[bytes, bytes | None]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _need_int(x: object, what: str) -> int:
    if not _is_int(x):
        raise InvalidArgument(f"{what} must be an integer")
    assert isinstance(x, int)
    return x


def _need_bool(x: object, what: str) -> None:
    if not isinstance(x, bool):
        raise InvalidArgument(f"{what} must be a boolean")


def _need_bytes(x: object, what: str) -> bytes:
    if not isinstance(x, bytes):
        raise InvalidArgument(f"{what} must be bytes")
    return x


def check_key_range(key: object, range_end: object) -> None:
    """`key` is required unless `range_end == b"\\0"` (all keys); a bounded range_end must not
    sort before key. An empty interval (range_end == key) is allowed and selects nothing."""
    k = _need_bytes(key, "key")
    end = _need_bytes(range_end, "range_end")
    if not k and end != ALL_KEYS:
        raise InvalidArgument("key is not provided")
    if end and end != ALL_KEYS and end < k:
        raise InvalidArgument("range_end must not be less than key")


def validate_range(r: Range) -> None:
    if not isinstance(r, Range):
        raise InvalidArgument(f"expected a Range, got {type(r).__name__}")
    check_key_range(r.key, r.range_end)
    if _need_int(r.revision, "revision") < 0:
        raise InvalidArgument("revision must not be negative")
    if _need_int(r.limit, "limit") < 0:
        raise InvalidArgument("limit must not be negative")
    try:
        SortOrder(r.sort_order)
        SortTarget(r.sort_target)
    except ValueError:
        raise InvalidArgument("invalid sort_order or sort_target") from None
    _need_bool(r.keys_only, "keys_only")
    _need_bool(r.count_only, "count_only")
    for what in ("min_mod_revision", "max_mod_revision", "min_create_revision",
                 "max_create_revision"):
        if _need_int(getattr(r, what), what) < 0:
            raise InvalidArgument(f"{what} must not be negative")


def _validate_put(p: Put, max_value_bytes: int) -> None:
    key = _need_bytes(p.key, "key")
    if not key:
        raise InvalidArgument("key is not provided")
    value = _need_bytes(p.value, "value")
    if len(value) > max_value_bytes:
        raise InvalidArgument(f"value is too large ({len(value)} > {max_value_bytes} bytes)")
    lease = _need_int(p.lease, "lease")
    for flag, name in (
        (p.prev_kv, "prev_kv"),
        (p.ignore_value, "ignore_value"),
        (p.ignore_lease, "ignore_lease"),
    ):
        _need_bool(flag, name)
    if p.ignore_value and value:
        raise InvalidArgument("value is provided")
    if p.ignore_lease and lease:
        raise InvalidArgument("lease is provided")


def _validate_delete(d: DeleteRange) -> None:
    check_key_range(d.key, d.range_end)
    _need_bool(d.prev_kv, "prev_kv")


def _validate_compare(c: Compare) -> None:
    if not isinstance(c, Compare):
        raise InvalidArgument(f"expected a Compare, got {type(c).__name__}")
    check_key_range(c.key, c.range_end)
    try:
        target = CompareTarget(c.target)
        CompareResult(c.result)
    except ValueError:
        raise InvalidArgument("invalid compare target or result") from None
    if target == CompareTarget.VALUE:
        if not isinstance(c.operand, bytes):
            raise InvalidArgument("compare operand must be bytes for target VALUE")
    elif not _is_int(c.operand):
        raise InvalidArgument(f"compare operand must be an integer for target {target.name}")


def _validate_txn(t: Txn, max_value_bytes: int, max_txn_ops: int, depth: int) -> None:
    if depth > MAX_TXN_DEPTH:
        raise InvalidArgument(f"txn nested deeper than {MAX_TXN_DEPTH}")
    if not all(isinstance(x, tuple | list) for x in (t.compare, t.success, t.failure)):
        raise InvalidArgument("txn compare/success/failure must be sequences")
    if max(len(t.compare), len(t.success), len(t.failure)) > max_txn_ops:
        raise InvalidArgument("too many operations in txn request")
    for c in t.compare:
        _validate_compare(c)
    for op in (*t.success, *t.failure):
        if isinstance(op, Range):
            validate_range(op)
        elif isinstance(op, Put):
            _validate_put(op, max_value_bytes)
        elif isinstance(op, DeleteRange):
            _validate_delete(op)
        elif isinstance(op, Txn):
            _validate_txn(op, max_value_bytes, max_txn_ops, depth + 1)
        else:
            raise InvalidArgument(f"{type(op).__name__} is not allowed in a txn")


def _delete_interval(d: DeleteRange) -> _Interval:
    if not d.range_end:
        return (d.key, d.key + b"\0")
    if d.range_end == ALL_KEYS:
        return (d.key, None)
    return (d.key, d.range_end)


def _hits(dels: list[_Interval], key: bytes) -> bool:
    return any(start <= key and (end is None or key < end) for start, end in dels)


_DUPLICATE = "duplicate key given in txn request"


def _check_intervals(
    ops: tuple[Range | Put | DeleteRange | Txn, ...],
) -> tuple[set[bytes], list[_Interval]]:
    """etcd's `checkIntervals`: within one branch (nested txns included) a key may be put at most
    once and never both put and deleted. A nested txn's success and failure branches exclude
    each other, so they may put the same key. Returns (put keys, delete intervals)."""
    dels = [_delete_interval(op) for op in ops if isinstance(op, DeleteRange)]
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, Txn):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for k in puts_then:
            if k in puts or _hits(dels, k):
                raise InvalidArgument(_DUPLICATE)
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or _hits(dels, k):
                raise InvalidArgument(_DUPLICATE)
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if not isinstance(op, Put):
            continue
        if op.key in puts or _hits(dels, op.key):
            raise InvalidArgument(_DUPLICATE)
        puts.add(op.key)
    return puts, dels


def validate_command(command: object, *, max_value_bytes: int, max_txn_ops: int) -> None:
    """Raise InvalidArgument if `command` can never be applied."""
    match command:
        case Put():
            _validate_put(command, max_value_bytes)
        case DeleteRange():
            _validate_delete(command)
        case Txn():
            _validate_txn(command, max_value_bytes, max_txn_ops, 1)
            _check_intervals(command.success)
            _check_intervals(command.failure)
        case Compact():
            if _need_int(command.revision, "compact revision") <= 0:
                raise InvalidArgument("compact revision must be positive")
        case LeaseGrant():
            if _need_int(command.id, "lease id") <= 0:
                raise InvalidArgument("lease id must be positive")
            if _need_int(command.ttl, "lease ttl") <= 0:
                raise InvalidArgument("lease ttl must be positive")
        case LeaseRevoke():
            _need_int(command.id, "lease id")
        case LeaseExpire():
            for lease_id in command.ids:
                _need_int(lease_id, "lease id")
            _need_int(command.term, "lease_expire term")
        case LeaseCheckpoint():
            for lease_id, remaining_ms in command.checkpoints:
                _need_int(lease_id, "lease id")
                if _need_int(remaining_ms, "lease remaining_ms") < -1:
                    raise InvalidArgument("lease remaining_ms must be >= -1")
            _need_int(command.term, "lease_checkpoint term")
        case LeaderEpoch():
            if _need_int(command.term, "leader_epoch term") <= 0:
                raise InvalidArgument("leader epoch term must be positive")
        case ExpireClients():
            _need_int(command.idle_before_ms, "idle_before_ms")
        case MemberUpdate():
            if _need_int(command.id, "member id") <= 0:
                raise InvalidArgument("member id must be positive")
            for what, v in (("name", command.name), ("peer", command.peer)):
                if not isinstance(v, str) or not v or len(v) > 256:
                    raise InvalidArgument(f"member {what} must be a non-empty string")
            if not isinstance(command.client, str) or len(command.client) > 256:
                # empty: not known yet (a member added with etcd's MemberAdd)
                raise InvalidArgument("member client must be a string")
            if not isinstance(command.removed, bool):
                raise InvalidArgument("member removed must be a bool")
        case Range():
            raise InvalidArgument("Range is a read, not a command; use a Txn or Store.range")
        case _:
            raise InvalidArgument(f"unknown command {type(command).__name__}")
