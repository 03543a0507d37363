"""The sync rule on real RaftNodes in one process (loopback, real peer transport, real files):

- a follower's acknowledgement is only counted by the leader for entries that follower has
  on stable storage (matchIndex never exceeds its synced index);
- a vote is only received once the voter's vote is in its state file;
- the leader never commits (so never applies or acknowledges) an entry above its own synced
  index — also a single node, which commits alone;
- group commit: fewer fdatasyncs than acknowledged writes under concurrency.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from raftreg.config import new_secret
from raftreg.consensus import fsm as R
from raftreg.consensus.journal import STATE_NAME
from raftreg.consensus.raft import RaftNode, RaftSettings
from raftreg.testing.ports import free_ports

pytestmark = pytest.mark.timeout(120)

# Three members and the event loop share one process (one GIL): on a busy two-core machine a
# tick thread can miss the default 0.4-0.8 s election timeout, and these tests are not about
# elections. Timeouts well above any starvation seen here keep the leader in place.
STEADY = {"election_timeout_min": 2.0, "election_timeout_max": 4.0,
          "leader_fallback_timeout": 3.0}


class Checked:
    """Nodes of one process, with the invariants checked on their tick threads."""

    def __init__(self, root: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(size)]
        self.secret = new_secret()
        self.nodes: dict[str, RaftNode] = {}
        self.violations: list[str] = []
        self.acks = 0
        self.votes = 0
        self.lock = threading.Lock()
        original = R._Fsm._SyncObj__onMessageReceived
        checked = self

        def on_message(fsm: Any, node: Any, message: dict[str, Any]) -> None:
            original(fsm, node, message)
            checked._after_message(fsm, node, message)

        monkeypatch.setattr(R._Fsm, "_SyncObj__onMessageReceived", on_message)
        apply_entries = R._Fsm._SyncObj__applyLogEntries

        def apply_log_entries(fsm: Any) -> Any:
            # runs right after the leader's commit computation in every tick
            if fsm._isLeader() and fsm.raftCommitIndex > fsm._journal.synced_index:
                with checked.lock:
                    checked.violations.append(
                        f"leader commits {fsm.raftCommitIndex} above its synced index "
                        f"{fsm._journal.synced_index}")
            return apply_entries(fsm)

        monkeypatch.setattr(R._Fsm, "_SyncObj__applyLogEntries", apply_log_entries)

    def _journal(self, addr: str) -> Any:
        return self.nodes[addr]._journal

    def _after_message(self, fsm: Any, node: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        peer = str(node.address)
        if peer not in self.nodes:
            return
        if kind == "next_node_idx" and message.get("success") and fsm._isLeader():
            match = fsm._SyncObj__raftMatchIndex.get(node, 0)
            synced = self._journal(peer).synced_index  # read after: it only grows here
            with self.lock:
                self.acks += 1
                if match > synced:
                    self.violations.append(f"leader counts {peer} up to {match}, "
                                           f"synced there only to {synced}")
        if kind == "response_vote":
            state = msgpack.unpackb((self.root / peer.replace(":", "_") / STATE_NAME)
                                    .read_bytes())
            with self.lock:
                self.votes += 1
                if state["term"] < message["term"] or state["vote"] is None:
                    self.violations.append(f"vote from {peer} received before it was stored: "
                                           f"{state} for term {message['term']}")

    def apply_fn(self, addr: str) -> Callable[[bytes], Any]:
        def apply_one(item: bytes) -> Any:  # tick thread of `addr`
            return len(item)

        return apply_one

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for a in self.addrs:
            s = RaftSettings(self_addr=a, peers=tuple(x for x in self.addrs if x != a),
                             secret=self.secret, data_dir=self.root / a.replace(":", "_"),
                             max_inflight=4, **STEADY)
            self.nodes[a] = RaftNode(s, self.apply_fn(a), lambda: lambda: [b""], lambda b: None,
                                     loop=loop)

    async def leader(self) -> RaftNode:
        for _ in range(500):
            leaders = [n for n in self.nodes.values() if n.is_leader]
            if len(leaders) == 1 and all(n.leader == leaders[0].self_addr
                                         for n in self.nodes.values()):
                return leaders[0]
            await asyncio.sleep(0.02)
        raise TimeoutError("no leader")

    def close(self) -> None:
        for n in self.nodes.values():
            n.close()


async def _writes(leader: RaftNode, total: int, inflight: int) -> None:
    sem = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with sem:
            assert await leader.propose(b"w%d" % i) == len(b"w%d" % i)

    await asyncio.gather(*(one(i) for i in range(total)))


async def test_three_nodes_sync_rule_and_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Checked(tmp_path, 3, monkeypatch)
    c.start(asyncio.get_running_loop())
    try:
        leader = await c.leader()
        before = leader.status().fdatasyncs
        await _writes(leader, 2000, 128)
        syncs = leader.status().fdatasyncs - before
        await _writes(leader, 50, 1)  # sequential: one sync per write at most
    finally:
        c.close()
    assert not c.violations, c.violations[:5]
    assert c.acks > 0 and c.votes > 0
    assert 1 <= syncs < 2000 / 4, f"{syncs} fdatasyncs for 2000 writes"


async def test_single_node_commits_only_synced_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Checked(tmp_path, 1, monkeypatch)
    c.start(asyncio.get_running_loop())
    try:
        leader = await c.leader()
        await _writes(leader, 300, 16)
        await _writes(leader, 30, 1)
        st = leader.status()
    finally:
        c.close()
    assert not c.violations, c.violations[:5]
    assert st.fdatasyncs >= 1
    # everything acknowledged is in the log on disk
    from raftreg.consensus.journal import scan_wal

    entries, _, _, _ = scan_wal(tmp_path / c.addrs[0].replace(":", "_") / "raft.wal")
    assert entries[-1][1] >= st.applied_index
