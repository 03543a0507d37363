"""The replicated lease table: id -> (ttl, remaining TTL field, attached keys).

Deadlines are not here (only the leader keeps them, on its own clock). Invariant, kept by the
`Store`: a key is in `keys` of lease L iff its live kv has `lease == L`; so the attached keys
are derivable from the key space and snapshots do not store them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from raftreg.errors import InvalidArgument
from raftreg.store.codec import read_int, read_list

__all__ = ["LeaseInfo", "LeaseTable"]


@dataclass(slots=True)
class LeaseInfo:
    """The store's (replicated) view of a lease. Deadlines are not here: only the leader keeps
    them, on its own clock. `remaining_ms` is the remaining TTL a leader last checkpointed
    (`LeaseCheckpoint`), -1 when none is."""

    id: int
    ttl: int
    keys: set[bytes] = field(default_factory=set)
    remaining_ms: int = -1


class LeaseTable:
    __slots__ = ("_checkpointed", "_leases")

    def __init__(self) -> None:
        self._leases: dict[int, LeaseInfo] = {}
        self._checkpointed: set[int] = set()  # ids with remaining_ms >= 0

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def grant(self, lease_id: int, ttl: int) -> None:
        assert lease_id not in self._leases
        self._leases[lease_id] = LeaseInfo(lease_id, ttl)

    def remove(self, lease_id: int) -> LeaseInfo:
        """Forget the lease; returns its (internal) record so the caller can delete its keys."""
        self._checkpointed.discard(lease_id)
        return self._leases.pop(lease_id)

    def attach(self, lease_id: int, key: bytes) -> None:
        self._leases[lease_id].keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def checkpoint(self, lease_id: int, remaining_ms: int) -> None:
        """Record (or with -1 clear) a remaining TTL; a missing lease is skipped."""
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.remaining_ms = remaining_ms
            if remaining_ms >= 0:
                self._checkpointed.add(lease_id)
            else:
                self._checkpointed.discard(lease_id)

    def checkpoints(self, ids: Iterable[int] | None = None) -> dict[int, int]:
        """{lease id: remaining ms} of the checkpointed leases among `ids` (None: all), in no
        set order. Costs nothing per lease while no lease is checkpointed."""
        held = self._checkpointed
        if not held:
            return {}
        chosen = held if ids is None else (i for i in ids if i in held)
        return {i: self._leases[i].remaining_ms for i in chosen}

    def get(self, lease_id: int) -> LeaseInfo | None:
        """A copy: callers cannot mutate the table through it."""
        lease = self._leases.get(lease_id)
        return None if lease is None else _copy(lease)

    def ttl(self, lease_id: int) -> int | None:
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.ttl

    def ttls(self) -> dict[int, int]:
        """{lease id: granted TTL} of every lease (no key sets copied), in no set order."""
        return {i: lease.ttl for i, lease in self._leases.items()}

    def all(self) -> list[LeaseInfo]:
        """Copies of every lease, sorted by id."""
        return [_copy(self._leases[i]) for i in sorted(self._leases)]

    # snapshot: [[id, ttl, remaining_ms], ...] sorted by id; keys are re-attached by the Store.

    def to_obj(self) -> list[object]:
        return [
            [i, self._leases[i].ttl, self._leases[i].remaining_ms] for i in sorted(self._leases)
        ]

    @classmethod
    def from_obj(cls, x: object) -> LeaseTable:
        table = cls()
        last = 0
        for entry in read_list(x, "lease table"):
            fields = read_list(entry, "lease", 3)
            lease_id = read_int(fields[0], "lease id")
            if lease_id <= last:
                raise InvalidArgument("corrupt snapshot: lease ids out of order")
            last = lease_id
            lease = LeaseInfo(lease_id, read_int(fields[1], "lease ttl"))
            lease.remaining_ms = read_int(fields[2], "lease remaining_ms")
            if lease.remaining_ms < -1:
                raise InvalidArgument("corrupt snapshot: lease remaining_ms below -1")
            if lease.remaining_ms >= 0:
                table._checkpointed.add(lease_id)
            table._leases[lease_id] = lease
        return table


def _copy(lease: LeaseInfo) -> LeaseInfo:
    return LeaseInfo(lease.id, lease.ttl, set(lease.keys), lease.remaining_ms)
