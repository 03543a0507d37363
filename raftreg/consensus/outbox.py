"""Sync-then-send for PySyncObj's transport: raft messages wait in an outbox until the journal
state they reflect is on stable storage.

PySyncObj's `TCPTransport.send` writes to the socket inside the call, so a message produced
right after an append or a vote would leave before any sync could run. `OutboxTransport.send`
only holds the message; `flush_outbox()` first calls `before_send()` once (raft.py's durable
point: the journal's group-commit fdatasync and the term/vote state write), then writes every
held message in order. The durable point must never return with unsynced state (it fail-stops
instead), so a released message never acknowledges anything that is not durable.

Interim: the peer transport (raftreg/consensus/peer.py, msgpack + AEAD) keeps this contract
and replaces this class (see COORDINATION.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport


class OutboxTransport(TCPTransport):  # type: ignore[misc]
    """PySyncObj's TCP transport whose `send` holds raft messages until `flush_outbox()`.
    Tick thread only (as PySyncObj's transport)."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._outbox: list[tuple[Any, Any]] = []
        # PySyncObj constructs the transport itself: the hook is found on the SyncObj.
        self.before_send: Callable[[], None] | None = getattr(syncObj, "durable_point", None)
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        conn = self._connections.get(node)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False  # as PySyncObj's: lost like on a dead connection
        self._outbox.append((node, message))
        return True

    def flush_outbox(self) -> None:
        """Sync (`before_send`), then write every held message in order."""
        if not self._outbox:
            return
        if self.before_send is not None:
            self.before_send()
        box, self._outbox = self._outbox, []
        for node, message in box:
            super().send(node, message)

    def _onTick(self) -> None:
        super()._onTick()
        self.flush_outbox()
