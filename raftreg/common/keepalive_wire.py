"""How lease renewals travel on a LeaseKeepAlive stream, for both of its writers: a client's
`LeaseKeeper` stream and a follower relaying renewals to its leader.

Contract of `RenewalWire` (one per stream):
- Until the stream's first answer, it writes one renewal (etcd's request: `ID`) and holds the
  rest; the first answer tells whether the server takes many leases per request (raftreg's
  `IDs`, announced by `batches` on its answers). From then on it writes up to
  `MAX_KEEPALIVE_IDS` leases per request to such a server, one per request to any other (etcd,
  an older raftreg). So no renewal is ever sent where it would be ignored.
- `decode` turns an answer of either shape into (lease id, TTL) pairs, in the answer's order;
  an answer whose ids and TTLs do not pair up raises `Unavailable` (the stream is unusable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from raftreg.config import MAX_KEEPALIVE_IDS
from raftreg.errors import Unavailable


class RenewalWire:
    """`request(**fields)` builds the stream's request message. `batches=False` for a server
    known not to take `IDs` (etcd's API): it then writes one lease per request from the start."""

    def __init__(self, request: Callable[..., Message], *, batches: bool | None = None) -> None:
        self._request = request
        self._batches = batches  # None: not known before the first answer
        self._sent_first = False
        self._held: list[int] = []

    def encode(self, lease_ids: Sequence[int]) -> list[Message]:
        """The requests that renew `lease_ids`, to write now (others may be held)."""
        if self._batches is None:
            if self._sent_first:
                self._held.extend(lease_ids)
                return []
            if not lease_ids:
                return []
            self._sent_first = True
            self._held.extend(lease_ids[1:])
            return [self._request(ID=lease_ids[0])]
        if not self._batches:
            return [self._request(ID=i) for i in lease_ids]
        out = []
        for start in range(0, len(lease_ids), MAX_KEEPALIVE_IDS):
            chunk = lease_ids[start:start + MAX_KEEPALIVE_IDS]
            out.append(self._request(ID=chunk[0]) if len(chunk) == 1 else
                       self._request(IDs=chunk))
        return out

    def decode(self, answer: Any) -> tuple[list[tuple[int, int]], list[Message]]:
        """(the answer's (lease id, TTL) pairs, the held requests that can be written now)."""
        ids = getattr(answer, "IDs", ())
        if ids and len(ids) != len(answer.TTLs):
            raise Unavailable(f"a keepalive answer names {len(ids)} leases "
                              f"but {len(answer.TTLs)} TTLs")
        pairs = list(zip(ids, answer.TTLs, strict=True)) if ids else [(answer.ID, answer.TTL)]
        if self._batches is not None:
            return pairs, []
        self._batches = bool(getattr(answer, "batches", False))
        held, self._held = self._held, []
        return pairs, self.encode(held)
