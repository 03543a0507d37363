"""A raft member held as a follower with no tick thread (`autoTick=False`), fed messages
directly; what it sends is recorded instead of written to a socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from raftreg.config import new_secret
from raftreg.consensus.fsm import _Fsm
from raftreg.consensus.journal import DurableJournal
from raftreg.testing.ports import free_ports

NOOP = b"\x01"  # entries that apply as nothing, whatever the command codec


class Follower:
    def __init__(self, tmp: Path) -> None:
        me, a, b = (f"127.0.0.1:{p}" for p in free_ports(3))
        self.leader, self.other = TCPNode(a), TCPNode(b)
        self.journal = DurableJournal(tmp)
        conf = SyncObjConf(autoTick=False, appendEntriesUseBatch=False,
                           dynamicMembershipChange=True, journalFile=None, bindAddress=me)
        self.fsm = _Fsm(me, [a, b], conf, lambda item: None, journal=self.journal,
                        secret=new_secret())
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.fsm._SyncObj__transport.send = self._send

    def _send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node, message))
        return True

    def ae(self, prev: int | None, prev_term: int | None, entries: list[tuple[int, int]],
           commit: int, term: int, node: Any = None) -> dict[str, Any] | None:
        """Deliver one append_entries; the reply sent (None if none)."""
        n = len(self.sent)
        self.fsm._SyncObj__onMessageReceived(node or self.leader, {
            "type": "append_entries", "term": term, "commit_index": commit,
            "entries": [(NOOP, i, t) for i, t in entries],
            "prevLogIdx": prev, "prevLogTerm": prev_term})
        return self.sent[-1][1] if len(self.sent) > n else None

    def log(self) -> list[tuple[int, int]]:
        return [(e[1], e[2]) for e in self.journal[:]]

    def apply(self) -> None:
        self.fsm._SyncObj__applyLogEntries()

    @property
    def commit(self) -> int:
        return int(self.fsm.raftCommitIndex)

    @property
    def applied(self) -> int:
        return int(self.fsm.raftLastApplied)


def term1_log(f: Follower) -> None:
    """Entries 2..8 of term 1, commit 7, applied 7."""
    for i in range(2, 9):
        ack = f.ae(i - 1, 1 if i > 2 else 0, [(i, 1)], min(i - 1, 7), 1)
        assert ack is not None and ack["success"] and ack["next_node_idx"] == i + 1
    f.ae(8, 1, [], 7, 1)
    f.apply()
    assert f.log() == [(1, 0)] + [(i, 1) for i in range(2, 9)]
    assert (f.commit, f.applied) == (7, 7)
