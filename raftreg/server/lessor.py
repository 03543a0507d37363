"""Lease deadlines (etcd's lessor): kept by the leader only, on its monotonic clock.

Contract:
- On becoming leader every lease gets a fresh full TTL, so a failover never expires a lease
  early; a whole-cluster restart is a failover too. A lease with a checkpointed remaining TTL
  gets that instead (below).
- `renew(id)` is answered only after a read barrier confirmed this node still leads, and the
  new deadline counts from BEFORE the barrier: once a renewal is acknowledged, no leader (this
  one or the next, which grants a full TTL on promotion) expires the lease before that deadline.
  `renew_many(ids)` is the same for many leases behind one barrier.
- Expiry is decided here but carried out as a replicated `LeaseExpire` command, in batches,
  so every replica deletes the same keys at the same revision. A lease whose expiry is in
  flight is no longer renewable (renew answers 0, the lease is lost).
- Fencing: a new leader first replicates `LeaderEpoch(term)` and neither renews nor expires
  until it is applied; every `LeaseExpire` carries the term it was decided in, and the store
  ignores it once a newer epoch is applied. So a deposed leader (e.g. resumed from a pause
  with stale deadlines, its proposal forwarded to the new leader by PySyncObj) cannot expire
  a lease the new leader has renewed. Found by the fault tests (seed 1000).
- Checkpoints (etcd's, `checkpoint_interval` seconds apart; 0 turns them off): the leader
  replicates `LeaseCheckpoint` with the remaining TTL, rounded up, of every lease that has more
  than an interval left, so that leader changes more frequent than a TTL cannot keep an
  abandoned lease alive for ever. A new leader gives a checkpointed lease `promotion +
  remaining`: the checkpoint was made before the promotion, so no earlier deadline is cut.
  The remaining TTLs are read once the new leader's epoch is applied (every older entry,
  clears included, is applied by then; older-term checkpoints after it are fenced). Renewing
  a checkpointed lease (or one whose checkpoint is in flight or of unknown outcome) sets its
  new deadline, then replicates its clear, in the same term and after the checkpoint in the
  log, and is acknowledged only once that clear is applied; a checkpoint taken meanwhile
  already counts from the new deadline. So a renewal is never undone by an older remaining TTL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence

from raftreg.errors import LeaseNotFound, NotApplied, RegistryError
from raftreg.store import LeaseInfo
from raftreg.store.commands import Command, LeaderEpoch, LeaseCheckpoint, LeaseExpire

log = logging.getLogger("raftreg.lessor")

EXPIRE_BATCH = 1000
CHECKPOINT_BATCH = 1000
# How often the leader's loop looks for expired leases (`run` ticks every TICK_S seconds).
TICK_S = 0.05


class Lessor:
    def __init__(
        self,
        *,
        is_leader: Callable[[], bool],
        term: Callable[[], int],
        ttls: Callable[[], dict[int, int]],
        ttl: Callable[[int], int | None],
        lease: Callable[[int], LeaseInfo | None],
        barrier: Callable[[], Awaitable[None]],
        propose: Callable[[Command], Awaitable[object]],
        epoch: Callable[[], int],
        checkpoints: Callable[[Iterable[int] | None], dict[int, int]] = lambda ids: {},
        checkpoint_interval: float = 0.0,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._is_leader = is_leader
        self._term = term
        self._ttls = ttls  # {id: granted TTL} of every lease
        self._ttl = ttl
        self._lease = lease
        self._barrier = barrier
        self._propose = propose
        self._epoch = epoch
        # {id: remaining ms} of the checkpointed leases among the ids given (None: all)
        self._checkpoints = checkpoints
        self._checkpoint_interval = checkpoint_interval
        self._next_checkpoint = 0.0
        self._checkpointing: set[int] = set()  # ids whose checkpoint is in flight
        # ids whose checkpoint failed with an unknown outcome in this term: it may still apply
        self._unsure: set[int] = set()
        self._promoted_at = 0.0
        self._settled_term: int | None = None  # the term whose epoch was seen applied
        self._announcing: asyncio.Task[None] | None = None
        self._tick = tick_s
        self._clock = clock
        self._sleep = sleep  # `run`'s pause between ticks, on the same clock as `clock`
        self._deadlines: dict[int, float] = {}
        self._expiring: set[int] = set()
        self._led_term: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_scan = 0.0  # when `tick` next syncs the deadlines with the store

    # ------------------------------------------------------------------ leader view

    def _ensure_current(self) -> bool:
        """Start a fresh lease epoch when this node (re)gains leadership. False if not leader."""
        if not self._is_leader():
            self._led_term = None
            self._deadlines.clear()
            self._expiring.clear()
            return False
        term = self._term()
        if self._led_term != term:
            now = self._clock()
            self._deadlines = {lid: now + ttl for lid, ttl in self._ttls().items()}
            self._expiring.clear()
            self._led_term = term
            self._promoted_at = now
            self._unsure.clear()  # older-term checkpoints: applied by our epoch, or fenced
            self._next_checkpoint = now + self._checkpoint_interval
            log.info("leading term %d: %d leases get a fresh TTL", term, len(self._deadlines))
        return True

    async def _await_epoch(self) -> None:
        """Return once this leader's `LeaderEpoch` is applied (proposing it if needed)."""
        term = self._led_term
        assert term is not None
        if self._epoch() >= term:
            self._settle(term)
            return
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.create_task(self._announce(term))
        await asyncio.shield(self._announcing)
        if self._epoch() < term:
            raise NotApplied("the new leader could not establish its lease epoch yet")
        self._settle(term)

    def _settle(self, term: int) -> None:
        """Once per term, when its epoch is seen applied: checkpointed leases count their
        remaining TTL from the promotion instead of a full TTL."""
        if self._settled_term == term:
            return
        self._settled_term = term
        for lid, remaining_ms in self._checkpoints(None).items():
            if lid in self._deadlines:
                self._deadlines[lid] = self._promoted_at + remaining_ms / 1000

    async def _announce(self, term: int) -> None:
        try:
            await self._propose(LeaderEpoch(term))
        except RegistryError as e:
            log.warning("leader epoch %d not confirmed: %s", term, e)

    def _deadline(self, lease_id: int, ttl: int) -> float:
        d = self._deadlines.get(lease_id)
        if d is None:  # granted since we took over: its TTL starts now
            d = self._deadlines[lease_id] = self._clock() + ttl
        return d

    async def renew(self, lease_id: int) -> int:
        """Leader only: extend the lease by its TTL; returns the TTL, 0 if the lease is gone."""
        return (await self.renew_many((lease_id,)))[0]

    async def renew_many(self, lease_ids: Sequence[int]) -> list[int]:
        """`renew` for many leases behind ONE read barrier; their TTLs in the same order."""
        started = self._clock()
        await self._barrier()
        if not self._ensure_current():
            raise NotApplied("not the leader")
        await self._await_epoch()
        ttls = []
        for lease_id in lease_ids:
            ttl = self._ttl(lease_id)
            if ttl is None or lease_id in self._expiring:
                ttls.append(0)
                continue
            self._deadlines[lease_id] = max(self._deadline(lease_id, ttl), started + ttl)
            ttls.append(ttl)
        # Deadlines first: a checkpoint taken while the clear is in flight already counts
        # from them. (A refused renewal keeps its later deadline: later is never unsafe.)
        await self._clear_checkpoints([i for i, t in zip(lease_ids, ttls, strict=True) if t])
        return ttls

    async def _clear_checkpoints(self, lease_ids: Sequence[int]) -> None:
        """Replicate the clear of every checkpoint (applied or in flight) among `lease_ids`;
        raises if it is not applied, so the renewal is refused."""
        clear = set(self._checkpoints(lease_ids))
        if self._checkpointing or self._unsure:
            clear.update(i for i in lease_ids if i in self._checkpointing or i in self._unsure)
        if not clear:
            return
        term = self._led_term
        assert term is not None
        await self._propose(LeaseCheckpoint(tuple((i, -1) for i in sorted(clear)), term))
        if not self._ensure_current() or self._led_term != term:
            raise NotApplied("not the leader")
        self._unsure.difference_update(clear)

    async def remaining(self, lease_id: int) -> tuple[int, LeaseInfo]:
        """Leader only: (remaining whole seconds, lease). Raises LeaseNotFound."""
        await self._barrier()
        if not self._ensure_current():
            raise NotApplied("not the leader")
        await self._await_epoch()
        lease = self._lease(lease_id)
        if lease is None or lease_id in self._expiring:
            raise LeaseNotFound(f"lease {lease_id:x} not found")
        left = self._deadline(lease.id, lease.ttl) - self._clock()
        return max(0, int(left + 0.999)), lease

    # ------------------------------------------------------------------ expiry loop

    async def run(self) -> None:
        while True:
            await self._sleep(self._tick)
            self.tick()

    def tick(self) -> None:
        """One pass of the expiry loop (`run` calls it every `tick_s`): follow leadership,
        announce this leader's epoch, and propose expiry of the leases past their deadline.
        Never blocks: proposals run as tasks (so it needs a running event loop). Tests drive
        it directly with a manual clock."""
        if not self._ensure_current():
            self._next_scan = 0.0
            return
        term = self._led_term
        assert term is not None
        if self._epoch() < term:
            if self._announcing is None or self._announcing.done():
                self._announcing = asyncio.create_task(self._announce(term))
            return  # no expiry before this leader's epoch is applied
        self._settle(term)
        now = self._clock()
        if now >= self._next_scan:
            self._scan()
            # The full scan reads every lease: keep it to ~10% of the loop however many
            # leases there are (a lease nobody renews starts its TTL when a scan sees it).
            done = self._clock()
            self._next_scan = done + 9 * (done - now)
            now = done
        due = []
        for lid in sorted(
            lid for lid, d in self._deadlines.items()
            if d <= now and lid not in self._expiring
        ):
            if self._ttl(lid) is None:  # revoked since the last scan
                del self._deadlines[lid]
            else:
                due.append(lid)
        for i in range(0, len(due), EXPIRE_BATCH):
            batch = tuple(due[i : i + EXPIRE_BATCH])
            self._expiring.update(batch)
            self._spawn(self._propose_expiry(batch, term))
        if self._checkpoint_interval and now >= self._next_checkpoint:
            self._next_checkpoint = now + self._checkpoint_interval
            self._checkpoint(now, term)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _checkpoint(self, now: float, term: int) -> None:
        """Propose the remaining TTL (ms, rounded up) of every lease with more than an
        interval left (etcd's rule), in batches of CHECKPOINT_BATCH."""
        pairs = [
            (lid, math.ceil((d - now) * 1000))
            for lid, d in sorted(self._deadlines.items())
            if d - now > self._checkpoint_interval
            and lid not in self._expiring and lid not in self._checkpointing
        ]
        for i in range(0, len(pairs), CHECKPOINT_BATCH):
            batch = tuple(pairs[i : i + CHECKPOINT_BATCH])
            self._checkpointing.update(lid for lid, _ in batch)
            self._spawn(self._propose_checkpoint(batch, term))

    def _scan(self) -> None:
        """Sync the deadlines with the store: forget gone leases, start the TTL of new ones."""
        live = self._ttls()
        for gone in [i for i in self._deadlines if i not in live]:
            del self._deadlines[gone]
        self._expiring.intersection_update(live)
        for lid, ttl in live.items():
            self._deadline(lid, ttl)

    async def _propose_checkpoint(self, batch: tuple[tuple[int, int], ...], term: int) -> None:
        ids = [lid for lid, _ in batch]
        try:
            await self._propose(LeaseCheckpoint(batch, term))
        except RegistryError as e:  # the next interval records them again
            log.warning("checkpoint of %d leases not confirmed: %s", len(batch), e)
            if self._led_term == term:
                self._unsure.update(ids)
        finally:
            self._checkpointing.difference_update(ids)

    async def _propose_expiry(self, ids: tuple[int, ...], term: int) -> None:
        try:
            await self._propose(LeaseExpire(ids, term))
        except RegistryError as e:
            # Not applied (or unknown): let the next tick decide again if we still lead.
            log.warning("lease expiry of %d leases not confirmed: %s", len(ids), e)
            self._expiring.difference_update(ids)
