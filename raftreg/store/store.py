"""The `Store` facade: the replicated state machine every node applies the log to.

Contracts:
- `apply` is total: bad input yields a `Failure` result and changes nothing. Every refusal is
  decided before the first change (static `validate`, then state checks — for txns along the
  whole precomputed path), so no write is ever half-applied and nothing is rolled back.
- Deterministic: the same requests in the same order give the same state, results, events,
  `hash()` and `snapshot()` bytes on every replica. No clocks (time is `Request.now_ms`), no
  randomness, no iteration over unordered containers where order reaches an output.
- `snapshot()` captures everything (key histories, change log, leases, request identities);
  `restore(snapshot())` yields a state whose next snapshot is byte-identical.
- `freeze()` is `snapshot()` split in two: the view is taken at once (pointer copies, no
  per-key work) and `StoreView.encode()` gives the same bytes later, from any thread, however
  many writes were applied meanwhile.
- `restore()` is split the other way: `decode()` does all the per-key work and reads nothing
  of the store's state, so it may run while others read the store; `install()` swaps the
  decoded state in at once.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Final

from raftreg.common.types import (
    DeleteRange,
    DeleteResult,
    Event,
    EventType,
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
from raftreg.config import DEFAULT_CLIENT_WINDOW
from raftreg.errors import (
    AlreadyExists,
    Compacted,
    FutureRevision,
    InvalidArgument,
    LeaseNotFound,
    RegistryError,
)
from raftreg.store.codec import (
    ArrayHeader,
    guard,
    kv_to_obj,
    pack,
    pack_chunks,
    read_bool,
    read_int,
    read_list,
    read_str,
    unpack,
)
from raftreg.store.commands import (
    Command,
    Compact,
    Done,
    ExpireClients,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    MemberUpdate,
    Request,
    Result,
)
from raftreg.store.failures import error_to_failure
from raftreg.store.identity import ClientTable
from raftreg.store.lease import LeaseInfo, LeaseTable
from raftreg.store.mvcc import (
    ALL_KEYS,
    COMPACTED_MESSAGE,
    FUTURE_MESSAGE,
    KeySpace,
    KeySpaceView,
)
from raftreg.store.txn import txn_path
from raftreg.store.validate import check_key_range, validate_command, validate_range

__all__ = ["SNAPSHOT_FORMAT", "Decoded", "Store", "StoreView"]

SNAPSHOT_MAGIC: Final = "raftreg.store"
SNAPSHOT_FORMAT: Final = 3  # 3 added the member table; format 2 is still restored

_OpResult = RangeResult | PutResult | DeleteResult | TxnResult

_SORT_FIELDS: Final = {
    SortTarget.KEY: attrgetter("key"),
    SortTarget.VERSION: attrgetter("version"),
    SortTarget.CREATE: attrgetter("create_revision"),
    SortTarget.MOD: attrgetter("mod_revision"),
    SortTarget.VALUE: attrgetter("value"),
}


class Store:
    """MVCC key space + leases + request identities; see the module docstring."""

    def __init__(
        self,
        *,
        max_value_bytes: int = 1_572_864,
        max_txn_ops: int = 128,
        client_window: int = DEFAULT_CLIENT_WINDOW,
    ) -> None:
        if max_value_bytes < 0 or max_txn_ops < 1 or client_window < 1:
            raise ValueError("store limits must be positive")
        self._max_value_bytes = max_value_bytes
        self._max_txn_ops = max_txn_ops
        self._client_window = client_window
        self._kv = KeySpace()
        self._leases = LeaseTable()
        self._clients = ClientTable(client_window)
        self._epoch = 0
        self._members: dict[int, MemberUpdate] = {}

    # -----------------------------------------------------------------------------------------
    # state queries

    @property
    def revision(self) -> int:
        return self._kv.revision

    @property
    def compact_revision(self) -> int:
        return self._kv.compact_revision

    def key_count(self) -> int:
        return self._kv.key_count()

    @property
    def leader_epoch(self) -> int:
        """The term of the newest leader that announced itself (see `LeaderEpoch`)."""
        return self._epoch

    def members(self) -> list[MemberUpdate]:
        """Every member record (the latest per id, removed ones included), by id."""
        return [self._members[i] for i in sorted(self._members)]

    def forget_members(self) -> None:
        """Drop the member table (a backup restored into a new cluster starts without the old
        cluster's membership records)."""
        self._members = {}

    def lease(self, id: int) -> LeaseInfo | None:
        return self._leases.get(id)

    def leases(self) -> list[LeaseInfo]:
        return self._leases.all()

    def lease_count(self) -> int:
        return len(self._leases)

    def lease_ttl(self, id: int) -> int | None:
        """The granted TTL of lease `id`, None if it does not exist."""
        return self._leases.ttl(id)

    def lease_ttls(self) -> dict[int, int]:
        """{lease id: granted TTL} of every lease, in no set order (cheaper than `leases`)."""
        return self._leases.ttls()

    def lease_checkpoints(self, ids: Iterable[int] | None = None) -> dict[int, int]:
        """{lease id: remaining ms} of the leases (among `ids`; None: all) with a checkpointed
        remaining TTL."""
        return self._leases.checkpoints(ids)

    def range(self, r: Range) -> RangeResult:
        """Serve a read at r.revision (0 = current). Raises InvalidArgument, Compacted,
        FutureRevision."""
        validate_range(r)
        if r.revision:
            self._kv.check_read_revision(r.revision)
        return self._range(r)

    def events_since(self, start_revision: int, key: bytes, range_end: bytes,
                     limit: int | None = None) -> list[Event]:
        """Committed events at revisions >= start_revision on the selected keys, in apply order,
        prev_kv filled; with `limit`, whole revisions up to the first boundary at or past
        `limit` events. Raises Compacted below compact_revision, InvalidArgument on a bad
        range."""
        check_key_range(key, range_end)
        return self._kv.events_since(start_revision, key, range_end, limit)

    # -----------------------------------------------------------------------------------------
    # apply

    def validate(self, command: Command) -> None:
        """Static checks only (no state); raises InvalidArgument."""
        validate_command(
            command, max_value_bytes=self._max_value_bytes, max_txn_ops=self._max_txn_ops
        )

    def apply(self, request: Request) -> tuple[Result, list[Event]]:
        """Apply one log item. Never raises for bad input: refusals are Failure results with
        nothing changed. A repeated (client_id, seq) returns the remembered result, no events."""
        if not isinstance(request, Request):
            return error_to_failure(InvalidArgument("not a Request"), self.revision), []
        seq = request.seq
        if seq:
            try:
                seen = self._clients.lookup(request.client_id, seq)
            except RegistryError as e:
                return error_to_failure(e, self.revision), []
            if seen is not None:
                return seen, []
        try:
            self.validate(request.command)
            result, events = self._dispatch(request.command)
        except RegistryError as e:  # raised before any change, by contract
            result, events = error_to_failure(e, self.revision), []
        if seq:
            self._clients.record(request.client_id, seq, request.now_ms, result)
        return result, events

    def _dispatch(self, cmd: Command) -> tuple[Result, list[Event]]:
        match cmd:
            case Put():
                return self._apply_put(cmd)
            case DeleteRange():
                return self._apply_delete(cmd)
            case Txn():
                return self._apply_txn(cmd)
            case Compact():
                return self._apply_compact(cmd)
            case LeaseGrant():
                if cmd.id in self._leases:
                    raise AlreadyExists("lease already exists")
                self._leases.grant(cmd.id, cmd.ttl)
                return LeaseGrantResult(self.revision, cmd.id, cmd.ttl), []
            case LeaseRevoke():
                if cmd.id not in self._leases:
                    raise LeaseNotFound("lease not found")
                events = self._revoke(cmd.id)
                return Done(self.revision), events
            case LeaderEpoch():
                self._epoch = max(self._epoch, cmd.term)
                return Done(self.revision), []
            case LeaseExpire():
                events = []
                if cmd.term < self._epoch:
                    return Done(self.revision), events  # a deposed leader's decision
                for lease_id in cmd.ids:
                    if lease_id in self._leases:
                        events.extend(self._revoke(lease_id))
                return Done(self.revision), events
            case LeaseCheckpoint():
                if cmd.term >= self._epoch:  # else a deposed leader's remaining TTLs
                    for lease_id, remaining_ms in cmd.checkpoints:
                        self._leases.checkpoint(lease_id, remaining_ms)
                return Done(self.revision), []
            case ExpireClients():
                self._clients.expire(cmd.idle_before_ms)
                return Done(self.revision), []
            case MemberUpdate():
                self._members[cmd.id] = cmd
                return Done(self.revision), []
        raise InvalidArgument(f"unknown command {type(cmd).__name__}")  # validate() caught it

    # --- key-value writes; callers run them inside KeySpace.begin()/end() --------------------

    def _check_put(self, p: Put) -> None:
        """State checks of a Put (etcd order: lease, then ignore_* needs an existing key)."""
        if p.lease and p.lease not in self._leases:
            raise LeaseNotFound("lease not found")
        if (p.ignore_value or p.ignore_lease) and self._kv.get(p.key) is None:
            raise InvalidArgument("key not found")

    def _put(self, p: Put) -> Event:
        old = self._kv.get(p.key)
        value = old.value if p.ignore_value and old is not None else p.value
        lease = old.lease if p.ignore_lease and old is not None else p.lease
        kv, prev = self._kv.put(p.key, value, lease)
        old_lease = prev.lease if prev is not None else 0
        if old_lease != lease:
            if old_lease:
                self._leases.detach(old_lease, p.key)
            if lease:
                self._leases.attach(lease, p.key)
        return Event(EventType.PUT, kv, prev)

    def _delete(self, key: bytes, range_end: bytes) -> list[Event]:
        events = []
        for tomb, prev in self._kv.delete_range(key, range_end):
            if prev.lease:
                self._leases.detach(prev.lease, prev.key)
            events.append(Event(EventType.DELETE, tomb, prev))
        return events

    def _revoke(self, lease_id: int) -> list[Event]:
        """Forget the lease and delete its keys (sorted, as etcd) at one revision."""
        lease = self._leases.remove(lease_id)
        if not lease.keys:
            return []
        self._kv.begin()
        pairs = self._kv.delete_keys(sorted(lease.keys))
        self._kv.end()
        return [Event(EventType.DELETE, tomb, prev) for tomb, prev in pairs]

    def _apply_put(self, p: Put) -> tuple[Result, list[Event]]:
        self._check_put(p)
        self._kv.begin()
        event = self._put(p)
        self._kv.end()
        return PutResult(self.revision, event.prev_kv if p.prev_kv else None), [event]

    def _apply_delete(self, d: DeleteRange) -> tuple[Result, list[Event]]:
        self._kv.begin()
        events = self._delete(d.key, d.range_end)
        self._kv.end()
        prev_kvs = tuple(e.prev_kv for e in events if e.prev_kv is not None) if d.prev_kv else ()
        return DeleteResult(self.revision, len(events), prev_kvs), events

    def _apply_compact(self, c: Compact) -> tuple[Result, list[Event]]:
        if c.revision <= self.compact_revision:
            raise Compacted(COMPACTED_MESSAGE, self.compact_revision)
        if c.revision > self.revision:
            raise FutureRevision(FUTURE_MESSAGE)
        self._kv.compact(c.revision)
        return Done(self.revision), []

    # --- txn ----------------------------------------------------------------------------------

    def _apply_txn(self, t: Txn) -> tuple[Result, list[Event]]:
        path = txn_path(self._kv, t)
        self._check_txn(t, iter(path))
        events: list[Event] = []
        self._kv.begin()
        result = self._exec_txn(t, iter(path), events)
        self._kv.end()
        stamped = _stamp(result, self.revision)
        assert isinstance(stamped, TxnResult)
        return stamped, events

    def _check_txn(self, t: Txn, path: Iterator[bool]) -> None:
        """Every state check of the chosen branches, before anything changes."""
        for op in t.success if next(path) else t.failure:
            if isinstance(op, Txn):
                self._check_txn(op, path)
            elif isinstance(op, Put):
                self._check_put(op)
            elif isinstance(op, Range) and op.revision:
                self._kv.check_read_revision(op.revision)

    def _exec_txn(self, t: Txn, path: Iterator[bool], events: list[Event]) -> TxnResult:
        """Run the chosen branches; results carry revision 0 until `_stamp`."""
        ok = next(path)
        responses: list[_OpResult] = []
        for op in t.success if ok else t.failure:
            match op:
                case Range():
                    responses.append(self._range(op))
                case Put():
                    event = self._put(op)
                    events.append(event)
                    responses.append(PutResult(0, event.prev_kv if op.prev_kv else None))
                case DeleteRange():
                    deleted = self._delete(op.key, op.range_end)
                    events.extend(deleted)
                    prev_kvs = (
                        tuple(e.prev_kv for e in deleted if e.prev_kv is not None)
                        if op.prev_kv
                        else ()
                    )
                    responses.append(DeleteResult(0, len(deleted), prev_kvs))
                case Txn():
                    responses.append(self._exec_txn(op, path, events))
        return TxnResult(0, ok, tuple(responses))

    # --- reads --------------------------------------------------------------------------------

    def _range(self, r: Range) -> RangeResult:
        """A validated, revision-checked read (inside a txn it sees the txn's earlier writes).
        The result's revision is the store's current one."""
        kvs = self._kv.range(r.key, r.range_end, r.revision or None)
        count = len(kvs)
        if r.count_only:
            return RangeResult(self.revision, (), False, count)
        if r.filtered:
            kvs = [kv for kv in kvs if _within(kv, r)]
        order, target = SortOrder(r.sort_order), SortTarget(r.sort_target)
        if order == SortOrder.NONE and target != SortTarget.KEY:
            order = SortOrder.ASCEND  # as etcd: a sort target without an order sorts ascending
        if order != SortOrder.NONE and not (target == SortTarget.KEY and order == SortOrder.ASCEND):
            # Stable, so ties stay in ascending key order (also when descending).
            kvs.sort(key=_SORT_FIELDS[target], reverse=order == SortOrder.DESCEND)
        more = False
        if r.limit and len(kvs) > r.limit:
            del kvs[r.limit :]
            more = True
        if r.keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return RangeResult(self.revision, tuple(kvs), more, count)

    # -----------------------------------------------------------------------------------------
    # hash, snapshot, restore

    def hash_kv(self, revision: int = 0) -> tuple[int, int]:
        """(CRC-32 of every key-value at `revision` (0: current), that revision): equal on
        replicas that applied the same log up to it, whatever their lease timers. Raises
        Compacted, FutureRevision."""
        if revision:
            self._kv.check_read_revision(revision)
        at = revision or self.revision
        crc = 0
        for kv in self._kv.range(b"", ALL_KEYS, at):
            crc = zlib.crc32(pack(kv_to_obj(kv)), crc)
        return crc, at

    def hash(self) -> int:
        """64-bit BLAKE2b over revision, compact_revision, every live kv (key order) and every
        lease (id order) with ttl, remaining_ms and sorted attached keys."""
        h = hashlib.blake2b(digest_size=8)
        h.update(pack(["kv", self.revision, self.compact_revision, self._epoch]))
        for kv in self._kv.live():
            h.update(pack(kv_to_obj(kv)))
        h.update(pack("leases"))
        for lease in self._leases.all():
            h.update(pack([lease.id, lease.ttl, lease.remaining_ms, sorted(lease.keys)]))
        h.update(pack(["members", [_member_to_obj(m) for m in self.members()]]))
        return int.from_bytes(h.digest(), "big")

    def snapshot(self) -> bytes:
        """[magic, format, key space, leases, clients, leader epoch, members] as msgpack; see
        each part's `to_obj`."""
        return self.freeze().encode()

    def freeze(self) -> StoreView:
        """The whole state now, to encode later (see the module contract). Outside `apply`."""
        return StoreView(
            self._kv.freeze(),
            self._leases.to_obj(),
            self._clients.freeze(),
            self._epoch,
            [_member_to_obj(m) for m in self.members()],
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's. On InvalidArgument (corrupt or foreign
        blob, unknown format) the current state is left untouched."""
        self.install(self.decode(data))

    def install(self, state: Decoded) -> None:
        """Replace the whole state with a decoded snapshot's (`decode`); no per-key work."""
        self._kv, self._leases, self._clients, self._epoch, self._members = state.parts

    def decode(self, data: bytes) -> Decoded:
        """A snapshot's state, checked and built but not installed: reads nothing of this
        store's state (only its `client_window` setting), so it may run while others read
        the store. InvalidArgument on a corrupt or foreign blob, or an unknown format."""
        obj = unpack(data)

        def build() -> tuple[KeySpace, LeaseTable, ClientTable, int, dict[int, MemberUpdate]]:
            items = read_list(obj, "snapshot")
            if len(items) < 2 or items[0] != SNAPSHOT_MAGIC:
                raise InvalidArgument("not a raftreg store snapshot")
            read_str(items[0], "snapshot magic")
            fmt = read_int(items[1], "snapshot format")
            if fmt not in (2, SNAPSHOT_FORMAT):
                raise InvalidArgument(f"unsupported snapshot format {fmt}")
            if len(items) != (6 if fmt == 2 else 7):
                raise InvalidArgument("malformed snapshot")
            members: dict[int, MemberUpdate] = {}
            for m in read_list(items[6], "snapshot members") if fmt >= 3 else []:
                rec = _member_from_obj(m)
                members[rec.id] = rec
            kv = KeySpace.from_obj(items[2])
            leases = LeaseTable.from_obj(items[3])
            clients = ClientTable.from_obj(items[4], self._client_window)
            for live in kv.live():
                if live.lease:
                    if live.lease not in leases:
                        raise InvalidArgument("corrupt snapshot: key attached to unknown lease")
                    leases.attach(live.lease, live.key)
            return kv, leases, clients, read_int(items[5], "snapshot leader epoch"), members

        return Decoded(guard(build, "snapshot"))


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded snapshot (`Store.decode`), for `Store.install`; built by nothing else."""

    parts: tuple[KeySpace, LeaseTable, ClientTable, int, dict[int, MemberUpdate]]


@dataclass(frozen=True, slots=True)
class StoreView:
    """A `Store` frozen by `Store.freeze`: its parts are copies or never change again."""

    kv: KeySpaceView
    leases: list[object]
    clients: ClientTable  # a copy no one changes
    epoch: int
    members: list[object]

    @property
    def revision(self) -> int:
        return self.kv.revision

    def encode(self) -> bytes:
        """The snapshot bytes (`Store.snapshot`) of the state it was taken from."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """`encode()` in pieces of about one key history each (see `pack_chunks`)."""
        return pack_chunks(self._parts())

    def _parts(self) -> Iterator[object | ArrayHeader]:
        yield ArrayHeader(7)
        yield SNAPSHOT_MAGIC
        yield SNAPSHOT_FORMAT
        yield from self.kv.parts()
        yield self.leases
        yield self.clients.to_obj()
        yield self.epoch
        yield self.members


def _member_to_obj(m: MemberUpdate) -> list[object]:
    return [m.id, m.name, m.peer, m.client, m.removed]


def _member_from_obj(x: object) -> MemberUpdate:
    items = read_list(x, "member", 5)
    return MemberUpdate(
        id=read_int(items[0], "member id"),
        name=read_str(items[1], "member name"),
        peer=read_str(items[2], "member peer"),
        client=read_str(items[3], "member client"),
        removed=read_bool(items[4], "member removed"),
    )


def _within(kv: KeyValue, r: Range) -> bool:
    """Whether `kv` passes `r`'s revision bounds (0 = unbounded)."""
    return not (
        (r.min_mod_revision and kv.mod_revision < r.min_mod_revision)
        or (r.max_mod_revision and kv.mod_revision > r.max_mod_revision)
        or (r.min_create_revision and kv.create_revision < r.min_create_revision)
        or (r.max_create_revision and kv.create_revision > r.max_create_revision)
    )


def _stamp(r: _OpResult, revision: int) -> _OpResult:
    """`r` with its revision (and its nested responses') set to `revision`."""
    if isinstance(r, TxnResult):
        return TxnResult(revision, r.succeeded, tuple(_stamp(x, revision) for x in r.responses))
    return replace(r, revision=revision)
