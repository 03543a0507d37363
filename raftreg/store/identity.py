"""Request identity: the table that makes a retried write apply at most once.

Per client id the table keeps the highest sequence number applied (`max_seq`), the results of
the sequence numbers in the window (max_seq - window, max_seq] that were applied, and the
largest `now_ms` seen from the client. A sequence number at or below the window's floor that is
not remembered can no longer be deduplicated and is refused (FailedPrecondition). Clients are
forgotten only by `expire` (an `ExpireClients` command), so the table's size is bounded by
clients x window.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftreg.errors import FailedPrecondition, InvalidArgument
from raftreg.store.codec import read_int, read_list, result_from_obj, result_to_obj
from raftreg.store.commands import Result

__all__ = ["ClientTable"]


@dataclass(slots=True)
class _Client:
    last_seen_ms: int
    max_seq: int
    results: dict[int, Result]  # invariant: every seq in (max_seq - window, max_seq]


class ClientTable:
    __slots__ = ("_clients", "_window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("client window must be >= 1")
        self._window = window
        self._clients: dict[int, _Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def lookup(self, client_id: int, seq: int) -> Result | None:
        """The remembered result of (client_id, seq), or None if it was not applied yet.
        Raises FailedPrecondition if seq fell out of the window unremembered."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        result = client.results.get(seq)
        if result is None and seq <= client.max_seq - self._window:
            raise FailedPrecondition("request id too old")
        return result

    def record(self, client_id: int, seq: int, now_ms: int, result: Result) -> None:
        """Remember the result of a newly applied (client_id, seq)."""
        client = self._clients.get(client_id)
        if client is None:
            self._clients[client_id] = _Client(now_ms, seq, {seq: result})
            return
        client.last_seen_ms = max(client.last_seen_ms, now_ms)
        client.results[seq] = result
        if seq <= client.max_seq:
            return
        old_floor = client.max_seq - self._window
        new_floor = seq - self._window
        client.max_seq = seq
        if new_floor - old_floor <= len(client.results):
            for s in range(old_floor + 1, new_floor + 1):
                client.results.pop(s, None)
        else:
            client.results = {s: r for s, r in client.results.items() if s > new_floor}

    def expire(self, idle_before_ms: int) -> None:
        """Forget clients last seen before `idle_before_ms`."""
        idle = [cid for cid, c in self._clients.items() if c.last_seen_ms < idle_before_ms]
        for cid in idle:
            del self._clients[cid]

    def freeze(self) -> ClientTable:
        """A copy no one changes, for a snapshot encoded later (results are immutable)."""
        copy = ClientTable(self._window)
        copy._clients = {
            cid: _Client(c.last_seen_ms, c.max_seq, dict(c.results))
            for cid, c in self._clients.items()
        }
        return copy

    # snapshot: [[client_id, last_seen_ms, max_seq, [[seq, result], ...]], ...], all sorted.

    def to_obj(self) -> list[object]:
        out: list[object] = []
        for cid in sorted(self._clients):
            c = self._clients[cid]
            results = [[s, result_to_obj(c.results[s])] for s in sorted(c.results)]
            out.append([cid, c.last_seen_ms, c.max_seq, results])
        return out

    @classmethod
    def from_obj(cls, x: object, window: int) -> ClientTable:
        table = cls(window)
        for entry in read_list(x, "client table"):
            fields = read_list(entry, "client", 4)
            cid = read_int(fields[0], "client id")
            if cid in table._clients:
                raise InvalidArgument("corrupt snapshot: duplicate client id")
            results: dict[int, Result] = {}
            for pair in read_list(fields[3], "client results"):
                seq_result = read_list(pair, "client result", 2)
                results[read_int(seq_result[0], "seq")] = result_from_obj(seq_result[1])
            table._clients[cid] = _Client(
                read_int(fields[1], "last_seen_ms"), read_int(fields[2], "max_seq"), results
            )
        return table
