"""TEST ONLY fault injection on the raft port: per-link drops and delays of PySyncObj messages.

`FaultRules` satisfies `raftreg.consensus.FaultInjection`. Only the test launcher
(`python -m raftreg.testing.node --fault-file FILE`, raftreg/testing/node.py) constructs it and
injects it into the node it builds; `python -m raftreg.daemon` and everything below it never
import this module, and production runs raftreg's plain peer transport.
"""

from __future__ import annotations

import collections
import json
import os
import random
import time
from typing import Any

from raftreg.consensus.peer import PeerTransport


class FaultRules:
    """TEST ONLY: the fault-injection rules of one node, re-read from a JSON file on change.

    The file maps a node's raft address to its rules; a node without an entry (or a missing or
    unreadable file) runs fault-free::

        {"127.0.0.1:7001": {"drop_to": ["127.0.0.1:7002"],    # outgoing raft messages dropped
                            "drop_from": ["127.0.0.1:7003"],  # incoming raft messages dropped
                            "drop_rate": 0.1,                 # every message, either way
                            "delay_ms": 20,                   # outgoing, FIFO per link
                            "unsafe_local_reads": false,      # DELIBERATELY BROKEN reads
                            "unsafe_no_sync": false}}         # DELIBERATELY BROKEN log

    A full partition of a and b is drop_to/drop_from both ways; one-way drops one direction.
    `unsafe_local_reads` makes `read_barrier()` return at once, i.e. reads are served from the
    local replica without proving leadership: a deliberately broken node for showing that the
    fault tests catch stale reads. `unsafe_no_sync` makes the node's journal skip every
    fsync/fdatasync (writes still happen): a deliberately broken node for showing that the
    power-cut tests catch lost acknowledged writes. Nothing but the fault tests may set them.
    """

    POLL_S = 0.02

    def __init__(self, path: str, self_addr: str) -> None:
        self.path = path
        self.self_addr = self_addr
        self.drop_to: frozenset[str] = frozenset()
        self.drop_from: frozenset[str] = frozenset()
        self.drop_rate = 0.0
        self.delay_s = 0.0
        self.unsafe_local_reads = False
        self.unsafe_no_sync = False
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._rng = random.Random()
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        """Re-read the file if it changed; at most every POLL_S unless forced (tick thread)."""
        now = time.monotonic()
        if not force and now - self._checked < self.POLL_S:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                mine = json.load(f).get(self.self_addr, {})
        except (OSError, ValueError, AttributeError):
            stamp, mine = None, {}
        self._stamp = stamp
        self.drop_to = frozenset(mine.get("drop_to", ()))
        self.drop_from = frozenset(mine.get("drop_from", ()))
        self.drop_rate = float(mine.get("drop_rate", 0.0))
        self.delay_s = float(mine.get("delay_ms", 0.0)) / 1000.0
        self.unsafe_local_reads = bool(mine.get("unsafe_local_reads", False))
        self.unsafe_no_sync = bool(mine.get("unsafe_no_sync", False))

    def transport(self) -> type[PeerTransport]:
        return FaultyTransport

    def drop(self, addr: str, outgoing: bool) -> bool:
        if addr in (self.drop_to if outgoing else self.drop_from):
            return True
        return self.drop_rate > 0 and self._rng.random() < self.drop_rate


class FaultyTransport(PeerTransport):
    """TEST ONLY: raftreg's peer transport with per-link drops and delays (`FaultRules`).

    Connections and their handshakes are untouched; only raft messages are dropped (both on
    send, per destination, and on receipt, per source) or held back. Delayed messages wait in a
    per-destination FIFO; when due they join the outbox, which the same tick releases after the
    durable point (so a delayed message, too, leaves only after the state it reflects is
    synced). A link never reorders (TCP does not either) and the tick thread never sleeps.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._faults: FaultRules = syncObj._faults
        self._held: dict[Any, collections.deque[tuple[float, Any]]] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    def _onTick(self) -> None:
        self._faults.poll()
        if self._held:
            now = time.monotonic()
            for node, q in list(self._held.items()):
                while q and q[0][0] <= now:
                    _, message = q.popleft()
                    if node.address not in self._faults.drop_to:  # partitioned meanwhile
                        super().send(node, message)
                if not q:
                    del self._held[node]
        super()._onTick()  # bind, connect, flush the outbox

    def send(self, node: Any, message: Any) -> bool:
        f = self._faults
        if f.drop(node.address, outgoing=True):
            return True  # "sent", lost on the way
        q = self._held.get(node)
        if f.delay_s > 0 or q:
            if q is None:
                q = self._held[node] = collections.deque()
            q.append((time.monotonic() + f.delay_s, message))
            return True
        return bool(super().send(node, message))

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if self._faults.drop(node.address, outgoing=False):
            return
        super()._onMessageReceived(node, message)
