"""A real `RegistryNode` over `LocalConsensus` (raftreg/consensus/local.py) on a `ManualClock`.

The node is the production one: its store, watch hub, lessor and its expiry loop (`lessor.run`,
started here as the daemon starts it), with the one-member in-process consensus in place of
`RaftNode`. Time moves only when a test moves the clock, so the node's lease and leadership
behaviour is stated to the lessor's tick, where the integration tests (tests/integration/
test_lease.py, tests/fault) can only bound it by wall-clock waits on a real cluster. No thread,
no process, no sleep on the wall clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from raftreg.client.protocol import prefix_range_end
from raftreg.common.clock import ManualClock
from raftreg.common.types import EventType, Put, Range
from raftreg.config import ClusterConfig, ClusterSettings, NodeConfig
from raftreg.consensus import Consensus, LocalConsensus, StateMachine
from raftreg.errors import NotApplied, OutcomeUnknown
from raftreg.server.lessor import TICK_S
from raftreg.server.node import RegistryNode
from raftreg.server.watch_hub import WatchSpec
from raftreg.store import LeaderEpoch, LeaseExpire, LeaseGrant, Request, Store, decode_request
from raftreg.store.commands import Command
from tests.server.test_watch_hub import events_of, take

PUT, DELETE = EventType.PUT, EventType.DELETE
TTL = 2


@dataclass
class Harness:
    node: RegistryNode
    consensus: LocalConsensus
    clock: ManualClock
    applied: list[Command]  # every command the state machine applied, in order
    restore: Callable[[bytes], None]  # the state machine's restore (the tick thread calls it)

    async def settle(self) -> None:
        """Let every ready task and handed-over publication run (no clock involved)."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance_to(self, t: float) -> None:
        """Move the clock to `t` in small steps, letting the node run at each (so every lessor
        tick in between happens at its own time)."""
        while self.clock.now() < t:
            self.clock.advance(min(0.01, t - self.clock.now()))
            await self.settle()

    def expiries(self) -> list[LeaseExpire]:
        return [c for c in self.applied if isinstance(c, LeaseExpire)]

    async def keys(self, prefix: bytes) -> list[bytes]:
        r = await self.node.read(Range(prefix, prefix_range_end(prefix)))
        return [kv.key for kv in r.kvs]

    async def grant(self, lease_id: int, keys: int = 2) -> None:
        await self.node.write(LeaseGrant(lease_id, TTL))
        for i in range(keys):
            await self.node.write(Put(b"l/%d/%d" % (lease_id, i), b"v", lease=lease_id))


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    cfg = ClusterConfig(ClusterSettings(), (NodeConfig("n1", "local:1", "local:2"),))
    applied: list[Command] = []
    made: list[LocalConsensus] = []
    restores: list[Callable[[bytes], None]] = []

    def consensus(sm: StateMachine) -> Consensus:
        restores.append(sm.restore)
        def apply_one(data: bytes) -> object:
            applied.append(decode_request(data).command)
            return sm.apply_one(data)

        made.append(LocalConsensus(StateMachine(apply_one, sm.freeze, sm.restore), "local:1"))
        return made[0]

    clock = ManualClock()
    node = RegistryNode(cfg, "n1", loop=asyncio.get_running_loop(), consensus=consensus,
                        clock=clock)
    lessor = asyncio.create_task(node.lessor.run())
    harness = Harness(node, made[0], clock, applied, restores[0])
    await harness.settle()
    try:
        yield harness
    finally:
        lessor.cancel()
        node.close()


# ---------------------------------------------------------------------------------------------
# lease expiry: exact to the lessor's tick, replicated, seen by watchers


async def test_lease_expires_between_its_ttl_and_one_tick_later(h: Harness) -> None:
    stream = h.node.watches.open_stream()
    w = h.node.watches.create(stream, WatchSpec(b"l/", prefix_range_end(b"l/")))
    assert w is not None
    await h.grant(7)
    granted = h.clock.now()
    await h.advance_to(granted + TTL - 0.001)
    assert h.expiries() == []
    assert await h.keys(b"l/") == [b"l/7/0", b"l/7/1"]
    # the lease's TTL starts at the first tick that sees it, at most one tick after the grant
    await h.advance_to(granted + TTL + 2 * TICK_S)
    assert h.expiries() == [LeaseExpire((7,), h.consensus.term)]
    assert await h.keys(b"l/") == []
    assert h.node.lease_ids() == []
    await h.settle()
    events = events_of(take(stream), w.id)
    assert [(e.type, e.kv.key) for e in events] == [
        (PUT, b"l/7/0"), (PUT, b"l/7/1"), (DELETE, b"l/7/0"), (DELETE, b"l/7/1")]
    deletes = {e.kv.mod_revision for e in events if e.type == DELETE}
    assert len(deletes) == 1, "a lease's keys are deleted in one revision"


async def test_keepalive_extends_the_lease_by_its_ttl_from_the_renewal(h: Harness) -> None:
    await h.grant(7)
    await h.advance_to(h.clock.now() + TTL - 0.5)
    renewed = h.clock.now()
    assert await h.node.lessor.renew(7) == TTL
    assert (await h.node.lessor.remaining(7))[0] == TTL
    await h.advance_to(renewed + TTL - 0.001)
    assert h.expiries() == [] and await h.keys(b"l/") == [b"l/7/0", b"l/7/1"]
    await h.advance_to(renewed + TTL + TICK_S)
    assert [c.ids for c in h.expiries()] == [(7,)]
    assert await h.node.lessor.renew(7) == 0, "an expired lease is not renewable"


async def test_lease_granted_with_no_leader_is_refused_and_expiry_waits_for_a_leader(
    h: Harness,
) -> None:
    await h.grant(7)
    h.consensus.lose_leadership()
    with pytest.raises(NotApplied):
        await h.node.write(LeaseGrant(8, TTL))
    with pytest.raises(NotApplied):
        await h.node.lessor.renew(7)
    await h.advance_to(h.clock.now() + 3 * TTL)
    assert h.expiries() == [], "no leader, no expiry"
    h.consensus.gain_leadership()
    regained = h.clock.now()
    # the new leader announces its epoch and gives every lease a fresh full TTL
    await h.advance_to(regained + TTL - 0.001)
    assert h.expiries() == []
    assert LeaderEpoch(2) in h.applied
    await h.advance_to(regained + TTL + 2 * TICK_S)
    assert h.expiries() == [LeaseExpire((7,), 2)]


# ---------------------------------------------------------------------------------------------
# watches


async def test_watch_from_an_old_revision_catches_up_in_order_then_follows_live(
    h: Harness,
) -> None:
    revisions = [(await h.node.write(Put(b"w/%d" % (i % 3), b"%d" % i))).revision
                 for i in range(10)]
    start = revisions[4]
    stream = h.node.watches.open_stream()
    w = h.node.watches.create(stream, WatchSpec(b"w/", prefix_range_end(b"w/"), start))
    assert w is not None
    live = [(await h.node.write(Put(b"w/%d" % i, b"live"))).revision for i in range(3)]
    await h.settle()
    events = events_of(take(stream), w.id)  # checks order, whole revisions, no duplicate
    assert [e.kv.mod_revision for e in events] == revisions[4:] + live
    assert [e.kv.value for e in events] == [b"%d" % i for i in range(4, 10)] + [b"live"] * 3


# ---------------------------------------------------------------------------------------------
# outcomes of proposals


async def test_proposals_after_a_lost_leadership_are_not_applied(h: Harness) -> None:
    await h.node.write(Put(b"k", b"1"))
    h.consensus.lose_leadership()
    with pytest.raises(NotApplied):
        await h.node.write(Put(b"k", b"2"))
    with pytest.raises(NotApplied):
        await h.node.read(Range(b"k"))
    assert (await h.node.read(Range(b"k"), serializable=True)).kvs[0].value == b"1"
    h.consensus.gain_leadership()
    assert h.node.raft.term == 2
    await h.node.write(Put(b"k", b"3"))
    assert (await h.node.read(Range(b"k"))).kvs[0].value == b"3"
    assert h.node.counters.proposals_failed == {"refused": 1}


@pytest.mark.parametrize("applied", [True, False])
async def test_outcome_unknown_may_or_may_not_have_applied(h: Harness, applied: bool) -> None:
    h.consensus.fail_next(applied=applied)
    with pytest.raises(OutcomeUnknown):
        await h.node.write(Put(b"k", b"v"))
    assert len((await h.node.read(Range(b"k"))).kvs) == int(applied)
    assert h.node.counters.proposals_failed == {"unknown_outcome": 1}
    await h.node.write(Put(b"k", b"after"))  # only the next proposal was affected


async def test_membership_of_a_local_consensus_is_fixed(h: Harness) -> None:
    assert [m.name for m in h.node.members] == ["n1"]
    assert h.node.leader_client_addr() == "local:2"
    status = h.node.raft_status()
    assert status.is_leader and status.applied_index == status.commit_index


# ---------------------------------------------------------------------------------------------
# a snapshot from the leader is decoded while the old state stays readable


async def test_a_snapshot_is_decoded_while_the_old_state_stays_readable(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await h.node.write(Put(b"old", b"1"))
    other = Store()
    other.apply(Request(Put(b"new", b"2")))
    blob = other.snapshot()
    decoding, go_on = threading.Event(), threading.Event()
    decode = Store.decode

    def slow_decode(store: Store, data: bytes) -> object:
        decoding.set()
        assert go_on.wait(10)
        return decode(store, data)

    monkeypatch.setattr(Store, "decode", slow_decode)

    def read(key: bytes) -> list[bytes]:  # on a thread of its own: a held lock blocks it only
        r = asyncio.run(h.node.read(Range(key), serializable=True))
        return [kv.key for kv in r.kvs]

    installing = threading.Thread(target=h.restore, args=(blob,))  # as the tick thread would
    installing.start()
    try:
        assert await asyncio.to_thread(decoding.wait, 10)
        try:
            assert await asyncio.wait_for(asyncio.to_thread(read, b"old"), 5) == [b"old"]
        except TimeoutError:
            pytest.fail("the store was locked while the snapshot was decoded")
    finally:
        go_on.set()
        await asyncio.to_thread(installing.join, 10)
    assert await asyncio.to_thread(read, b"new") == [b"new"]
    assert await asyncio.to_thread(read, b"old") == []
