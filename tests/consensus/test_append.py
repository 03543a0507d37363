"""The follower's AppendEntries (fsm.py `_Fsm._append_entries`), fed messages directly:
PySyncObj 0.3.17 deleted every entry after prevLogIdx on any overlap (committed and applied
ones too); ours keeps matching entries and cuts only at a real conflict above the commit."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
        self.fsm._SyncObj__transport.send = lambda node, msg: self.sent.append((node, msg))

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


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Follower]:
    fol = Follower(tmp_path)
    yield fol
    fol.fsm._SyncObj__transport.destroy()
    fol.fsm._poller = None
    if fol.journal._fd >= 0:
        os.close(fol.journal._fd)


def term1_log(f: Follower) -> None:
    """Entries 2..8 of term 1, commit 7, applied 7."""
    for i in range(2, 9):
        ack = f.ae(i - 1, 1 if i > 2 else 0, [(i, 1)], min(i - 1, 7), 1)
        assert ack is not None and ack["success"] and ack["next_node_idx"] == i + 1
    f.ae(8, 1, [], 7, 1)
    f.apply()
    assert f.log() == [(1, 0)] + [(i, 1) for i in range(2, 9)]
    assert (f.commit, f.applied) == (7, 7)


def test_stale_or_repeated_append_deletes_nothing(
    f: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    term1_log(f)
    before = f.log()
    ack = f.ae(5, 1, [(6, 1)], 7, 1)  # a repeated send of entry 6
    assert f.log() == before
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 7
    ack = f.ae(5, 1, [], 7, 1)  # a stale heartbeat
    assert f.log() == before and (f.commit, f.applied) == (7, 7)
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 6
    ack = f.ae(3, 1, [(4, 1), (5, 1), (6, 1)], 7, 1)  # overlap inside the log
    assert f.log() == before and ack is not None and ack["next_node_idx"] == 7
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_conflict_above_the_commit_is_cut_there_only(f: Follower) -> None:
    term1_log(f)
    # A term-2 leader whose log ends at 7 (term 1): its no-op at 8 replaces our uncommitted 8.
    ack = f.ae(7, 1, [(8, 2)], 7, 2, node=f.other)
    assert f.log() == [(1, 0)] + [(i, 1) for i in range(2, 8)] + [(8, 2)]
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 9
    # ...then more entries after a matching overlap
    ack = f.ae(6, 1, [(7, 1), (8, 2), (9, 2)], 8, 2, node=f.other)
    assert f.log()[-2:] == [(8, 2), (9, 2)]
    assert ack is not None and ack["next_node_idx"] == 10 and f.commit == 8


def test_conflict_with_a_committed_entry_is_refused(
    f: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    term1_log(f)
    before = f.log()
    ack = f.ae(5, 1, [(6, 2)], 7, 2, node=f.other)  # would replace committed, applied 6
    assert ack is None  # not acknowledged
    assert f.log() == before and (f.commit, f.applied) == (7, 7)
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(crit) == 1 and "committed entry 6" in crit[0].getMessage()


def test_commit_never_covers_an_unverified_tail(f: Follower) -> None:
    term1_log(f)
    f.ae(7, 1, [(8, 2)], 7, 2, node=f.other)  # our 8 (term 1) replaced
    f.ae(8, 2, [], 8, 2, node=f.other)
    assert f.commit == 8
    # a heartbeat that only proves the log up to 5 moves nothing, whatever the leader's commit
    f.ae(5, 1, [], 20, 2, node=f.other)
    assert f.commit == 8


def test_missing_or_mismatching_prev_is_refused_with_a_reset(f: Follower) -> None:
    term1_log(f)
    ack = f.ae(12, 1, [(13, 1)], 7, 1)  # beyond our end
    assert ack is not None and not ack["success"] and ack["reset"]
    assert ack["next_node_idx"] == 9
    ack = f.ae(8, 3, [(9, 3)], 7, 3, node=f.other)  # our 8 has term 1, not 3
    assert ack is not None and not ack["success"] and ack["next_node_idx"] == 8
    assert f.log()[-1] == (8, 1)


def test_stale_term_is_ignored(f: Follower) -> None:
    term1_log(f)
    f.ae(8, 1, [(9, 2)], 8, 2, node=f.other)
    assert f.ae(5, 1, [(6, 1)], 7, 1) is None  # the deposed leader's old term
    assert f.log()[-1] == (9, 2)
