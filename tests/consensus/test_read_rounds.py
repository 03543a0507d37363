"""Linearizable reads on real RaftNodes in one process (loopback, real peer transport, real
files): ReadIndex rounds append nothing to the log, a follower's read sees every write
acknowledged before it, and a leader cut off from its followers never confirms a read."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from raftreg.config import new_secret
from raftreg.consensus.raft import RaftNode, RaftSettings
from raftreg.errors import Unavailable
from raftreg.testing.ports import free_ports
from tests.consensus.test_sync_rule import STEADY

pytestmark = pytest.mark.timeout(120)


class Group:
    """Three raft members whose state machine is the list of applied items."""

    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop) -> None:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        secret = new_secret()
        self.applied: dict[str, list[bytes]] = {a: [] for a in addrs}
        self.lock = threading.Lock()
        self.nodes: dict[str, RaftNode] = {}
        for a in addrs:
            s = RaftSettings(self_addr=a, peers=tuple(x for x in addrs if x != a),
                             secret=secret, data_dir=root / a.replace(":", "_"), **STEADY)
            self.nodes[a] = RaftNode(s, self._apply_fn(a), lambda: lambda: [b""], lambda b: None,
                                     loop=loop)

    def _apply_fn(self, addr: str):  # type: ignore[no-untyped-def]
        def apply_one(item: bytes) -> None:  # tick thread of `addr`
            with self.lock:
                self.applied[addr].append(item)

        return apply_one

    def state(self, node: RaftNode) -> list[bytes]:
        with self.lock:
            return list(self.applied[node.self_addr])

    async def leader(self) -> RaftNode:
        async with asyncio.timeout(30):
            while True:
                leaders = [n for n in self.nodes.values() if n.is_leader]
                if len(leaders) == 1 and all(n.leader == leaders[0].self_addr
                                             for n in self.nodes.values()):
                    return leaders[0]
                await asyncio.sleep(0.02)

    def followers(self, leader: RaftNode) -> list[RaftNode]:
        return [n for n in self.nodes.values() if n is not leader]

    def close(self) -> None:
        for n in self.nodes.values():
            n.close()


@pytest.fixture
async def group(tmp_path: Path) -> Group:  # type: ignore[misc]
    g = Group(tmp_path, asyncio.get_running_loop())
    try:
        yield g
    finally:
        g.close()


async def test_reads_append_no_log_entry_and_share_rounds(group: Group) -> None:
    leader = await group.leader()
    for i in range(20):
        await leader.propose(b"w%d" % i)
    async with asyncio.timeout(30):  # every member has applied everything
        while {n.status().applied_index for n in group.nodes.values()} != {
                leader.status().commit_index}:
            await asyncio.sleep(0.01)
    before = {a: n.status() for a, n in group.nodes.items()}
    async with asyncio.timeout(30):
        for _ in range(5):  # 5 bursts of 300 concurrent reads spread over the three members
            await asyncio.gather(*(n.read_barrier() for n in group.nodes.values()
                                   for _ in range(100)))
    for a, n in group.nodes.items():
        st = n.status()
        assert (st.log_len, st.commit_index) == (before[a].log_len, before[a].commit_index), (
            "a read appended a log entry")
        assert st.fdatasyncs == before[a].fdatasyncs, "a read cost a disk sync"


async def test_a_follower_read_sees_every_write_acknowledged_before_it(group: Group) -> None:
    leader = await group.leader()
    followers = group.followers(leader)
    async with asyncio.timeout(60):
        for i in range(100):
            item = b"x%d" % i
            await leader.propose(item)  # acknowledged: applied on the leader
            f = followers[i % 2]
            await f.read_barrier()
            assert group.state(f)[-1:] == [item], f"read {i} on a follower missed its write"


async def test_a_leader_cut_off_from_its_followers_confirms_no_read(group: Group) -> None:
    leader = await group.leader()
    await leader.propose(b"before")
    await leader.read_barrier()
    for f in group.followers(leader):
        f.close()  # the leader still believes it leads until leader_fallback_timeout
    assert leader.is_leader
    with pytest.raises(Unavailable):
        # it steps down within leader_fallback_timeout (3 s here) and fails the round then;
        # a read served in between would be unconfirmed (the followers may have moved on)
        await asyncio.wait_for(leader.read_barrier(), timeout=10)
    assert not leader.is_leader
