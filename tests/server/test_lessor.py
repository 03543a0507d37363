"""The lessor (raftreg/server/lessor.py) on a manual clock: no threads, no processes, no sleeps.

The lessor's callables are faked over a real `Store` (leases, epoch, and the proposals it makes
are applied to it), its clock is a number the test moves, and its expiry loop is driven one
`tick()` at a time. So every timing property is stated exactly, to the tick, instead of as a
wall-clock bound on a real cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.common.types import Put
from raftreg.errors import LeaseNotFound, OutcomeUnknown, RegistryError, Unavailable
from raftreg.server.lessor import EXPIRE_BATCH, Lessor
from raftreg.store import (
    Command,
    Failure,
    LeaderEpoch,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseRevoke,
    Request,
    Store,
)


class Harness:
    """One node's view: leadership and term are plain fields, the store is real, proposals
    are applied at once, or held until `release()` when `hold` is set."""

    def __init__(self, checkpoint_interval: float = 0.0) -> None:
        self.now = 1000.0
        self.store = Store()
        self.leader = True
        self.term = 1
        self.barrier_s = 0.0  # how far the clock moves while a read barrier is in flight
        self.on_barrier: Callable[[], None] | None = None  # runs while the barrier is in flight
        self.hold_barriers = False  # barriers wait in `barrier_waiters` until released
        self.barrier_waiters: list[asyncio.Future[None]] = []
        self.hold = False
        self.proposed: list[Command] = []
        self.pending: list[tuple[Command, asyncio.Future[None]]] = []
        self.lessor = Lessor(
            is_leader=lambda: self.leader,
            term=lambda: self.term,
            ttls=self.store.lease_ttls,
            ttl=self.store.lease_ttl,
            lease=self.store.lease,
            barrier=self._barrier,
            propose=self._propose,
            epoch=lambda: self.store.leader_epoch,
            checkpoints=self.store.lease_checkpoints,
            checkpoint_interval=checkpoint_interval,
            clock=lambda: self.now,
        )

    async def _barrier(self) -> None:
        if self.hold_barriers:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.barrier_waiters.append(fut)
            await fut
        self.now += self.barrier_s
        if self.on_barrier is not None:
            self.on_barrier()

    async def _propose(self, cmd: Command) -> object:
        self.proposed.append(cmd)
        if self.hold:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pending.append((cmd, fut))
            await fut
        return self.apply(cmd)

    def apply(self, cmd: Command) -> object:
        result, _ = self.store.apply(Request(cmd))
        assert not isinstance(result, Failure), result
        return result

    def grant(self, lease_id: int, ttl: int, keys: int = 1) -> None:
        self.apply(LeaseGrant(lease_id, ttl))
        for i in range(keys):
            self.apply(Put(b"k/%x/%d" % (lease_id, i), b"v", lease=lease_id))

    def release(self, error: RegistryError | None = None) -> None:
        """Complete every held proposal (applied), or fail them all with `error` (not applied)."""
        for _, fut in self.pending:
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
        self.pending.clear()

    async def tick(self, at: float | None = None) -> None:
        """Move the clock to `at` (if given), run one lessor tick, let its tasks run."""
        if at is not None:
            assert at >= self.now, "the manual clock only moves forward"
            self.now = at
        self.lessor.tick()
        await settle()

    async def start(self) -> None:
        """First tick as leader: announces (and applies) the epoch; nothing expires yet."""
        await self.tick()
        assert self.proposed[-1] == LeaderEpoch(self.term)
        assert self.store.leader_epoch == self.term

    def expiries(self) -> list[LeaseExpire]:
        return [c for c in self.proposed if isinstance(c, LeaseExpire)]

    def expired_ids(self) -> list[int]:
        return [i for c in self.expiries() for i in c.ids]

    def checkpoints(self) -> list[LeaseCheckpoint]:
        return [c for c in self.proposed if isinstance(c, LeaseCheckpoint)]


async def settle() -> None:
    """Let every task the lessor started run as far as it can (no clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------
# a renewed lease never expires before its deadline


async def test_unrenewed_lease_expires_at_the_first_tick_at_its_deadline() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    t0 = h.now
    await h.start()  # the lease gets its TTL from now
    await h.tick(t0 + 9.999)
    assert h.expiries() == []
    await h.tick(t0 + 10)
    assert h.expiries() == [LeaseExpire((1,), 1)]
    assert h.store.lease(1) is None and h.store.key_count() == 0


async def test_renewed_lease_never_expires_before_its_deadline() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    t0 = h.now
    await h.start()
    for k in range(1, 6):  # renew every 6 s, ticking every 0.5 s: never expires
        renewed_at = t0 + 6 * k
        while h.now + 0.5 < renewed_at:
            await h.tick(h.now + 0.5)
        h.now = renewed_at
        assert await h.lessor.renew(1) == 10
        assert h.expiries() == [], f"expired before renewal {k}"
    last = h.now
    while h.now + 0.25 < last + 10:
        await h.tick(h.now + 0.25)
    await h.tick(last + 10 - 1e-6)
    assert h.expiries() == [], "expired before the last renewal's deadline"
    await h.tick(last + 10)
    assert h.expired_ids() == [1]


async def test_renewal_never_shortens_a_deadline() -> None:
    """Two renewals in flight, the earlier-started one answered last: the deadline stays at
    the later one's (deadlines only move forward)."""
    h = Harness()
    h.grant(1, ttl=10)
    await h.start()
    t0 = h.now
    h.hold_barriers = True
    h.now = t0 + 8
    first = asyncio.create_task(h.lessor.renew(1))  # deadline t0 + 18
    await settle()
    h.now = t0 + 9
    second = asyncio.create_task(h.lessor.renew(1))  # deadline t0 + 19
    await settle()
    w_first, w_second = h.barrier_waiters
    w_second.set_result(None)
    await settle()
    assert second.result() == 10
    h.now = t0 + 9.5
    w_first.set_result(None)
    await settle()
    assert first.result() == 10
    await h.tick(t0 + 18.999)
    assert h.expiries() == []
    await h.tick(t0 + 19)
    assert h.expired_ids() == [1]


async def test_remaining_reports_whole_seconds_rounded_up() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    await h.start()
    t0 = h.now
    left, lease = await h.lessor.remaining(1)
    assert (left, lease.id, lease.ttl) == (10, 1, 10)
    h.now = t0 + 2.5
    assert (await h.lessor.remaining(1))[0] == 8
    h.now = t0 + 9.9
    assert (await h.lessor.remaining(1))[0] == 1
    h.now = t0 + 12
    assert (await h.lessor.remaining(1))[0] == 0  # due, not yet expired by a tick
    with pytest.raises(LeaseNotFound):
        await h.lessor.remaining(99)


# ---------------------------------------------------------------------------------------------
# the renewal deadline counts from before the barrier


async def test_renewal_deadline_counts_from_before_the_barrier() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    await h.start()
    t0 = h.now
    h.now = started = t0 + 4
    h.barrier_s = 3.0  # the renewal's read barrier takes 3 s
    assert await h.lessor.renew(1) == 10
    assert h.now == started + 3
    h.barrier_s = 0.0
    await h.tick(started + 10 - 1e-6)
    assert h.expiries() == []
    # Expires at start + TTL, not at barrier end + TTL (started + 13): a client that sent the
    # keepalive at `started` was promised `started + TTL`, and no more.
    await h.tick(started + 10)
    assert h.expired_ids() == [1]


async def test_many_renewals_share_one_barrier_and_its_start_time() -> None:
    """`renew_many`: one read barrier for all, each deadline counted from before it, 0 for a
    lease that is gone, answers in request order."""
    h = Harness()
    h.grant(1, ttl=10)
    h.grant(2, ttl=20)
    await h.start()
    barriers = 0

    def count() -> None:
        nonlocal barriers
        barriers += 1

    h.on_barrier = count
    t0 = h.now
    h.now = started = t0 + 5
    h.barrier_s = 2.0
    assert await h.lessor.renew_many([2, 99, 1, 1]) == [20, 0, 10, 10]
    assert barriers == 1
    h.barrier_s = 0.0
    await h.tick(started + 10 - 1e-6)
    assert h.expiries() == []
    await h.tick(started + 10)  # lease 1: renewed at `started` (before the barrier) + 10
    assert h.expired_ids() == [1]


# ---------------------------------------------------------------------------------------------
# on becoming leader every lease gets a fresh full TTL


async def test_new_leader_gives_every_lease_a_fresh_full_ttl() -> None:
    h = Harness()
    h.leader = False
    h.grant(1, ttl=5)
    h.grant(2, ttl=10)
    await h.tick()
    assert h.proposed == []  # a follower proposes nothing
    h.now += 1000  # the leases are long "overdue" on any clock that counted meanwhile
    h.leader, h.term = True, 3
    promoted = h.now
    await h.start()
    assert h.proposed == [LeaderEpoch(3)]
    left = {i: (await h.lessor.remaining(i))[0] for i in (1, 2)}
    assert left == {1: 5, 2: 10}
    await h.tick(promoted + 5 - 1e-6)
    assert h.expiries() == []
    await h.tick(promoted + 5)
    assert h.expiries() == [LeaseExpire((1,), 3)]
    await h.tick(promoted + 10 - 1e-6)
    assert h.expired_ids() == [1]
    await h.tick(promoted + 10)
    assert h.expiries() == [LeaseExpire((1,), 3), LeaseExpire((2,), 3)]


async def test_regaining_leadership_restarts_the_ttl_of_every_lease() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    await h.start()
    t0 = h.now
    await h.tick(t0 + 6)
    h.leader = False  # deposed at t0 + 6 ...
    await h.tick(t0 + 7)
    h.leader, h.term = True, 2  # ... and elected again in a later term at t0 + 9
    h.now = t0 + 9
    await h.start()
    await h.tick(t0 + 18.999)  # the old deadline t0 + 10 is forgotten
    assert h.expiries() == []
    await h.tick(t0 + 19)
    assert h.expiries() == [LeaseExpire((1,), 2)]


async def test_new_term_unseen_by_any_tick_still_restarts_every_ttl() -> None:
    """Leadership lost and regained between two ticks: the new term alone starts a fresh
    epoch (the old term's deadlines may be stale: another leader may have renewed since)."""
    h = Harness()
    h.grant(1, ttl=10)
    await h.start()
    t0 = h.now
    await h.tick(t0 + 8)
    h.term = 5
    h.now = t0 + 9
    await h.start()
    assert h.proposed[-1] == LeaderEpoch(5)
    await h.tick(t0 + 18.999)
    assert h.expiries() == []
    await h.tick(t0 + 19)
    assert h.expiries() == [LeaseExpire((1,), 5)]


async def test_lease_granted_while_leading_counts_from_when_it_is_first_seen() -> None:
    h = Harness()
    await h.start()
    t0 = h.now
    await h.tick(t0 + 1)
    h.grant(7, ttl=4)
    await h.tick(t0 + 2)  # the scan starts its TTL
    await h.tick(t0 + 5.999)
    assert h.expiries() == []
    await h.tick(t0 + 6)
    assert h.expired_ids() == [7]


async def test_revoked_lease_is_not_expired() -> None:
    h = Harness()
    h.grant(1, ttl=5)
    h.grant(2, ttl=5)
    await h.start()
    t0 = h.now
    h.apply(LeaseRevoke(1))
    await h.tick(t0 + 5)
    assert h.expiries() == [LeaseExpire((2,), 1)]
    assert await h.lessor.renew(1) == 0


# ---------------------------------------------------------------------------------------------
# expiry is proposed as LeaseExpire batches carrying the term


async def test_mass_expiry_is_proposed_in_batches_of_expire_batch_with_the_term() -> None:
    h = Harness()
    h.term = 4
    n = 2 * EXPIRE_BATCH + 7
    for i in range(1, n + 1):
        h.grant(i, ttl=3, keys=0)
    await h.start()
    h.hold = True  # keep them in flight: one tick decides every batch at once
    await h.tick(h.now + 3)
    batches = h.expiries()
    assert [len(b.ids) for b in batches] == [EXPIRE_BATCH, EXPIRE_BATCH, 7]
    assert all(b.term == 4 for b in batches)
    ids = [i for b in batches for i in b.ids]
    assert ids == list(range(1, n + 1)), "every due lease exactly once, in id order"
    await h.tick(h.now + 1)
    assert len(h.expiries()) == 3, "a lease in flight is not proposed again"
    h.release()
    await settle()
    assert h.store.leases() == []
    await h.tick(h.now + 1)
    assert len(h.expiries()) == 3


async def test_expiry_of_leases_with_keys_deletes_them_through_the_store() -> None:
    h = Harness()
    h.grant(1, ttl=2, keys=3)
    h.grant(2, ttl=9, keys=2)
    await h.start()
    await h.tick(h.now + 2)
    assert h.expiries() == [LeaseExpire((1,), 1)]
    assert h.store.key_count() == 2  # lease 2's keys stay


# ---------------------------------------------------------------------------------------------
# nothing renews or expires before the LeaderEpoch is applied


async def test_nothing_expires_before_the_leader_epoch_is_applied() -> None:
    h = Harness()
    h.grant(1, ttl=1)
    h.hold = True
    t0 = h.now
    await h.tick()
    assert h.proposed == [LeaderEpoch(1)]
    for k in range(1, 20):  # far past the TTL, many ticks: one announcement, no expiry
        await h.tick(t0 + k)
    assert h.proposed == [LeaderEpoch(1)]
    h.release()
    await settle()
    assert h.store.leader_epoch == 1
    await h.tick()
    assert h.expiries() == [LeaseExpire((1,), 1)]


async def test_renew_waits_for_the_leader_epoch() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    h.hold = True
    renewal = asyncio.create_task(h.lessor.renew(1))
    remaining = asyncio.create_task(h.lessor.remaining(1))
    await settle()
    assert not renewal.done() and not remaining.done()
    assert h.proposed == [LeaderEpoch(1)], "concurrent callers share one announcement"
    h.release()
    await settle()
    assert renewal.result() == 10
    assert remaining.result()[0] == 10


async def test_renew_is_refused_when_the_epoch_is_not_confirmed() -> None:
    h = Harness()
    h.grant(1, ttl=10)
    h.hold = True
    renewal = asyncio.create_task(h.lessor.renew(1))
    await settle()
    h.release(OutcomeUnknown("leader changed"))  # not applied
    await settle()
    with pytest.raises(Unavailable):
        renewal.result()
    assert h.store.leader_epoch == 0
    await h.tick(h.now + 100)
    assert h.expiries() == []
    assert h.proposed == [LeaderEpoch(1), LeaderEpoch(1)], "the next tick announces again"
    h.release()
    await settle()


# ---------------------------------------------------------------------------------------------
# a lease whose expiry is in flight is not renewable


async def test_lease_with_expiry_in_flight_is_not_renewable() -> None:
    h = Harness()
    h.grant(1, ttl=5)
    await h.start()
    h.hold = True
    await h.tick(h.now + 5)
    assert h.expiries() == [LeaseExpire((1,), 1)]
    assert h.store.lease(1) is not None  # not applied yet ...
    assert await h.lessor.renew(1) == 0  # ... but already lost
    with pytest.raises(LeaseNotFound):
        await h.lessor.remaining(1)
    h.release()
    await settle()
    assert h.store.lease(1) is None
    assert await h.lessor.renew(1) == 0


async def test_failed_expiry_is_decided_again_by_the_next_tick() -> None:
    h = Harness()
    h.grant(1, ttl=5)
    await h.start()
    h.hold = True
    await h.tick(h.now + 5)
    h.release(OutcomeUnknown("timed out"))
    await settle()
    assert h.store.lease(1) is not None
    await h.tick()
    assert h.expiries() == [LeaseExpire((1,), 1), LeaseExpire((1,), 1)]
    h.release()
    await settle()
    assert h.store.lease(1) is None


# ---------------------------------------------------------------------------------------------
# a deposed leader stops expiring


async def test_deposed_leader_neither_expires_nor_renews() -> None:
    h = Harness()
    h.grant(1, ttl=5)
    await h.start()
    t0 = h.now
    h.leader = False
    for k in range(1, 20):
        await h.tick(t0 + k)
    assert h.expiries() == []
    with pytest.raises(Unavailable):
        await h.lessor.renew(1)
    with pytest.raises(Unavailable):
        await h.lessor.remaining(1)


async def test_deposed_during_renewal_barrier_refuses_the_renewal() -> None:
    h = Harness()
    h.grant(1, ttl=5)
    await h.start()

    def deposed() -> None:
        h.leader = False

    h.on_barrier = deposed
    with pytest.raises(Unavailable):
        await h.lessor.renew(1)
    h.on_barrier = None
    await h.tick(h.now + 10)
    assert h.expiries() == []


async def test_stale_expiry_of_a_deposed_leader_is_ignored_by_the_store() -> None:
    """The expiry decided in term 1 is still in flight when a newer leader announces itself:
    the store drops it, so the lease the new leader keeps alive survives."""
    h = Harness()
    h.grant(1, ttl=5)
    await h.start()
    h.hold = True
    await h.tick(h.now + 5)
    (stale,) = h.pending
    assert stale[0] == LeaseExpire((1,), 1)
    h.apply(LeaderEpoch(2))  # a new leader (another node) took over and announced term 2
    h.leader = False
    stale[1].set_result(None)  # the old proposal is finally committed after the epoch
    h.pending.clear()
    await settle()
    assert h.store.lease(1) is not None
    assert h.store.key_count() == 1


# ---------------------------------------------------------------------------------------------
# checkpoints: a new leader gives a checkpointed lease its remaining TTL


async def test_checkpoint_records_the_remaining_ttl_of_leases_with_more_than_an_interval() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    h.grant(2, ttl=15)
    h.grant(3, ttl=30)
    await h.start()
    t0 = h.now
    await h.tick(t0 + 9.999)
    assert h.checkpoints() == []
    h.now = t0 + 10.0004  # remaining TTLs are rounded up to the ms: never shorter
    assert await h.lessor.renew(3) == 30
    await h.tick()
    # lease 2 has 4.9996 s left, less than an interval: not recorded (etcd's rule)
    assert h.checkpoints() == [LeaseCheckpoint(((1, 50_000), (3, 30_000)), 1)]
    assert h.store.lease_checkpoints() == {1: 50_000, 3: 30_000}
    await h.tick(t0 + 19.999)
    assert len(h.checkpoints()) == 1, "one pass per interval"
    await h.tick(t0 + 20.5)
    assert h.checkpoints()[1:] == [LeaseCheckpoint(((1, 39_500), (3, 19_501)), 1)]


async def test_new_leader_gives_a_checkpointed_lease_its_remaining_ttl() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    h.grant(2, ttl=60)
    h.apply(LeaseCheckpoint(((1, 20_000),), term=0))  # recorded by an earlier leader
    h.leader, h.term = True, 2
    promoted = h.now
    await h.start()
    assert (await h.lessor.remaining(1))[0] == 20
    assert (await h.lessor.remaining(2))[0] == 60
    await h.tick(promoted + 19.999)
    assert h.expiries() == []
    await h.tick(promoted + 20)
    assert h.expiries() == [LeaseExpire((1,), 2)]


async def test_remaining_ttls_are_read_once_the_epoch_is_applied() -> None:
    """A clear committed in the old term but applied after the promotion: the new leader reads
    the checkpoints only when its epoch is applied, so it never uses the cleared one."""
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    h.apply(LeaseCheckpoint(((1, 5_000),), term=0))
    h.hold = True
    t0 = h.now
    await h.tick()  # promotion: the epoch is proposed, not applied
    assert h.proposed == [LeaderEpoch(1)]
    h.apply(LeaseCheckpoint(((1, -1),), term=0))  # the older term's clear, applied now
    h.release()
    await settle()
    await h.tick(t0 + 59.999)
    assert h.expiries() == []
    await h.tick(t0 + 60)
    assert h.expiries() == [LeaseExpire((1,), 1)]


async def test_renewing_a_checkpointed_lease_replicates_its_clear_first() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    h.grant(2, ttl=60)
    await h.start()
    t0 = h.now
    await h.tick(t0 + 30)
    assert h.store.lease_checkpoints() == {1: 30_000, 2: 30_000}
    h.hold = True
    renewal = asyncio.create_task(h.lessor.renew_many([2, 99]))
    await settle()
    assert not renewal.done(), "acknowledged before its clear was applied"
    assert h.proposed[-1] == LeaseCheckpoint(((2, -1),), 1)
    h.release()
    await settle()
    assert renewal.result() == [60, 0]
    assert h.store.lease_checkpoints() == {1: 30_000}
    h.hold = False
    proposed = len(h.proposed)
    assert await h.lessor.renew(2) == 60
    assert h.proposed[proposed:] == [], "a lease without a checkpoint renews with no entry"
    # The next leader: lease 1 gets its 30 s left, lease 2 (renewed) a full TTL.
    h.term = 2
    promoted = h.now
    await h.start()
    await h.tick(promoted + 30)
    assert h.expiries() == [LeaseExpire((1,), 2)]
    await h.tick(promoted + 59.999)
    assert h.expired_ids() == [1]


async def test_renewal_clears_a_checkpoint_still_in_flight_after_it() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    await h.start()
    h.hold = True
    await h.tick(h.now + 10)
    assert h.checkpoints() == [LeaseCheckpoint(((1, 50_000),), 1)]
    renewal = asyncio.create_task(h.lessor.renew(1))
    await settle()
    assert h.checkpoints()[1:] == [LeaseCheckpoint(((1, -1),), 1)]
    h.release()  # applied in log order: the checkpoint, then its clear
    await settle()
    assert renewal.result() == 60
    assert h.store.lease_checkpoints() == {}


async def test_a_checkpoint_taken_while_a_renewal_clears_counts_from_the_renewal() -> None:
    """Lease 2's clear is in flight when the next checkpoint pass runs: lease 1, renewed in the
    same batch (no clear needed), is recorded with its renewed deadline, not the old one."""
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    h.grant(2, ttl=60)
    await h.start()
    t0 = h.now
    await h.tick(t0 + 10)
    assert await h.lessor.renew(1) == 60  # clears lease 1's checkpoint
    assert h.store.lease_checkpoints() == {2: 50_000}
    h.hold = True
    h.now = t0 + 15
    renewal = asyncio.create_task(h.lessor.renew_many([1, 2]))
    await settle()
    await h.tick(t0 + 20)  # a checkpoint pass while lease 2's clear is held
    h.release()  # applied in log order
    await settle()
    assert renewal.result() == [60, 60]
    assert h.store.lease_checkpoints() == {1: 55_000, 2: 55_000}
    h.hold = False
    h.term = 2  # a new leader at t0 + 20: both keep their renewed deadline t0 + 75
    await h.start()
    await h.tick(t0 + 74.999)
    assert h.expiries() == []
    await h.tick(t0 + 75)
    assert h.expiries() == [LeaseExpire((1, 2), 2)]


async def test_a_checkpoint_of_unknown_outcome_is_cleared_by_the_next_renewal() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    await h.start()
    h.hold = True
    await h.tick(h.now + 10)
    h.release(OutcomeUnknown("timed out"))  # it may still commit later
    await settle()
    h.hold = False
    assert await h.lessor.renew(1) == 60
    assert h.checkpoints()[1:] == [LeaseCheckpoint(((1, -1),), 1)]
    assert await h.lessor.renew(1) == 60
    assert len(h.checkpoints()) == 2, "cleared once"


async def test_renewal_is_refused_when_its_clear_is_not_applied() -> None:
    h = Harness(checkpoint_interval=10)
    h.grant(1, ttl=60)
    await h.start()
    await h.tick(h.now + 10)
    h.hold = True
    renewal = asyncio.create_task(h.lessor.renew(1))
    await settle()
    h.release(OutcomeUnknown("leader changed"))
    await settle()
    with pytest.raises(Unavailable):
        renewal.result()
    assert h.store.lease_checkpoints() == {1: 50_000}


# ---------------------------------------------------------------------------------------------
# the same properties against a model, over random schedules


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    ops = st.one_of(
        st.tuples(st.just("tick"), st.just(0), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5])),
        st.tuples(st.just("renew"), st.integers(1, 3), st.sampled_from([0.0, 0.5, 1.5])),
        st.tuples(st.just("failover"), st.just(0), st.sampled_from([0.0, 1.0, 20.0])),
    )
    return draw(st.lists(ops, min_size=1, max_size=60))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(schedules())
def test_lessor_matches_the_deadline_model(schedule: list[tuple[str, int, float]]) -> None:
    """Exact model: a lease expires at the first tick at or after its deadline, which is the
    latest of (promotion + TTL, every acknowledged renewal's start + TTL); never earlier."""
    asyncio.run(_check_model(schedule))


async def _check_model(schedule: list[tuple[str, int, float]]) -> None:
    ttl = {1: 2, 2: 3, 3: 5}
    h = Harness()
    for lid, t in ttl.items():
        h.grant(lid, t)
    live = set(ttl)
    deadline: dict[int, float] = {}
    fresh = True  # the next lessor call (tick or renew after its barrier) sets fresh TTLs
    acked_start: dict[int, float] = {}  # the client's view: last acknowledged renewal start
    promoted = h.now
    for op, lid, dt in schedule:
        seen = len(h.proposed)
        if op == "tick":
            h.now += dt
            if fresh:
                deadline, fresh, promoted = {i: h.now + ttl[i] for i in live}, False, h.now
            await h.tick()
            new = h.proposed[seen:]
            if h.store.leader_epoch < h.term:
                pytest.fail("the epoch was not applied")
            if new[:1] == [LeaderEpoch(h.term)]:
                assert new == [LeaderEpoch(h.term)], "expiry in the announcing tick"
                continue
            due = sorted(i for i in live if deadline[i] <= h.now)
            assert new == ([LeaseExpire(tuple(due), h.term)] if due else []), (h.now, deadline)
            for i in due:  # never before what the client was promised
                assert h.now >= acked_start.get(i, float("-inf")) + ttl[i]
                assert h.now >= promoted + ttl[i]
            live -= set(due)
        elif op == "renew":
            h.barrier_s = dt
            started = h.now
            got = await h.lessor.renew(lid)
            if fresh:
                deadline, fresh, promoted = {i: h.now + ttl[i] for i in live}, False, h.now
            new = [c for c in h.proposed[seen:] if not isinstance(c, LeaderEpoch)]
            assert new == [], "a renewal proposes nothing but the epoch"
            if lid in live:
                assert got == ttl[lid]
                deadline[lid] = max(deadline[lid], started + ttl[lid])
                acked_start[lid] = started
            else:
                assert got == 0
        else:  # failover: deposed for `dt` seconds, then leader again in a newer term
            if dt:  # (dt == 0: lost and regained between two ticks, seen by none)
                h.leader = False
                await h.tick()
                h.now += dt
                await h.tick()
                assert h.proposed[seen:] == [], "a deposed leader proposed"
            h.leader, h.term = True, h.term + 1
            fresh = True


@st.composite
def checkpoint_schedules(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """Like `schedules`, with steps near the 1 s checkpoint interval and quick failovers."""
    ops = st.one_of(
        st.tuples(st.just("tick"), st.just(0), st.sampled_from([0.0, 0.5, 1.0, 1.5])),
        st.tuples(st.just("renew"), st.integers(1, 4), st.sampled_from([0.0, 0.5])),
        st.tuples(st.just("failover"), st.just(0), st.sampled_from([0.0, 0.0, 0.5, 3.0])),
    )
    return draw(st.lists(ops, min_size=1, max_size=40))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(checkpoint_schedules())
def test_checkpoints_never_expire_a_lease_before_its_promise(
    schedule: list[tuple[str, int, float]],
) -> None:
    """With checkpoints every 1 s: no lease expires before the last acknowledged renewal's
    start (or its grant) + TTL, whatever the failovers; and none later than without them."""
    asyncio.run(_check_checkpoints(schedule))


async def _check_checkpoints(schedule: list[tuple[str, int, float]]) -> None:
    ttl = {1: 2, 2: 5, 3: 8, 4: 12}
    h = Harness(checkpoint_interval=1.0)
    for lid, t in ttl.items():
        h.grant(lid, t)
    promised = {i: h.now + t for i, t in ttl.items()}
    live = set(ttl)
    bound: dict[int, float] = {}  # the latest expiry without checkpoints (the exact model's)
    fresh = True

    async def tick(dt: float) -> None:
        nonlocal bound, fresh, live
        h.now += dt
        if fresh:
            bound, fresh = {i: h.now + ttl[i] for i in live}, False
        seen = len(h.expired_ids())
        await h.tick()
        expired = set(h.expired_ids()[seen:])
        for i in expired:
            assert h.now >= promised[i], f"lease {i} expired before its promise"
        live -= expired
        late = {i for i in live if bound[i] <= h.now}
        assert not late, f"leases {late} outlived their deadline without checkpoints"

    for op, lid, dt in schedule:
        if op == "tick":
            await tick(dt)
        elif op == "renew":
            h.barrier_s = dt
            started = h.now
            got = await h.lessor.renew(lid)
            if fresh:
                bound, fresh = {i: h.now + ttl[i] for i in live}, False
            if lid in live:
                assert got == ttl[lid]
                promised[lid] = max(promised[lid], started + ttl[lid])
                bound[lid] = max(bound[lid], started + ttl[lid])
            else:
                assert got == 0
        else:
            if dt:
                h.leader = False
                await h.tick()
                h.now += dt
                await h.tick()
            h.leader, h.term = True, h.term + 1
            fresh = True
    for _ in range(2 * max(ttl.values()) + 2):  # then no renewal: every lease runs out
        await tick(0.5)
    assert not live
