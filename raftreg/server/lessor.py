"""Lease deadlines (etcd's lessor): kept by the leader only, on its monotonic clock.

Contract:
- On becoming leader every lease gets a fresh full TTL, so a failover never expires a lease
  early; a whole-cluster restart is a failover too.
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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from raftreg.errors import LeaseNotFound, NotApplied, RegistryError
from raftreg.store import LeaseInfo
from raftreg.store.commands import Command, LeaderEpoch, LeaseExpire

log = logging.getLogger("raftreg.lessor")

EXPIRE_BATCH = 1000
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
            log.info("leading term %d: %d leases get a fresh TTL", term, len(self._deadlines))
        return True

    async def _await_epoch(self) -> None:
        """Return once this leader's `LeaderEpoch` is applied (proposing it if needed)."""
        term = self._led_term
        assert term is not None
        if self._epoch() >= term:
            return
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.create_task(self._announce(term))
        await asyncio.shield(self._announcing)
        if self._epoch() < term:
            raise NotApplied("the new leader could not establish its lease epoch yet")

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
        return ttls

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
            task = asyncio.create_task(self._propose_expiry(batch, term))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _scan(self) -> None:
        """Sync the deadlines with the store: forget gone leases, start the TTL of new ones."""
        live = self._ttls()
        for gone in [i for i in self._deadlines if i not in live]:
            del self._deadlines[gone]
        self._expiring.intersection_update(live)
        for lid, ttl in live.items():
            self._deadline(lid, ttl)

    async def _propose_expiry(self, ids: tuple[int, ...], term: int) -> None:
        try:
            await self._propose(LeaseExpire(ids, term))
        except RegistryError as e:
            # Not applied (or unknown): let the next tick decide again if we still lead.
            log.warning("lease expiry of %d leases not confirmed: %s", len(ids), e)
            self._expiring.difference_update(ids)
