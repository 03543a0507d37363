"""The two kinds of cluster the runner drives, behind one interface: `_RaftregTarget`
(raftreg's `ProcessCluster` with the fault transport; after-heal reads on raw gRPC stubs) and
`_EtcdTarget` (a real etcd `EtcdCluster`; process faults only, every read through
`EtcdRegistryClient`). Each builds its cluster, applies a schedule's TEST ONLY settings
(`setup`), writes the sentinel that ends the after-heal reads (`sentinel`), reads one node's
committed history, and compares every node's final state with the replayed history
(`state_violations`). All of it runs on the runner's event loop (blocking cluster calls go
through `asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from raftreg import errors as E
from raftreg.client import GrpcRegistryClient
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.types import Event, KeyValue
from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.faults.apply import FaultCluster
from raftreg.testing.faults.checks import (
    _committed_history,
    _etcd_all_keys,
    _etcd_committed_history,
    _final_state,
    _LeaderPoller,
)
from raftreg.testing.faults.schedule import NETWORK_KINDS, Schedule, ScheduleResult
from raftreg.testing.history import PREFIX
from raftreg.testing.watchcheck import final_state

# Every fsync on the power-cut disks takes this much longer than the real one (~2 ms here), so
# that a cut often comes while a sync is under way: there is then an unsynced tail to drop or
# tear, as there would be under a heavier load.
POWER_CUT_SYNC_DELAY_MS = 5.0
SENTINEL = "/zz/fault-sentinel"
SNAPSHOT_ENTRIES = 100


class _RaftregTarget:
    """raftreg's ProcessCluster with the fault transport; after-heal reads with raw stubs."""

    def __init__(self, root: Path, schedule: Schedule) -> None:
        self.c = ProcessCluster(
            root, faults=True, power_cuts=schedule.power_cuts,
            sync_delay_ms=POWER_CUT_SYNC_DELAY_MS, disk_metadata=schedule.disk_metadata,
            auto_compact_retain=0,
            # a raft dump and log compaction every ~100 entries: every schedule runs through
            # dumps written mid-fault and snapshots sent to followers that fell behind
            snapshot_entries=SNAPSHOT_ENTRIES,
            # lease checkpoints every second: the workload's 3 s leases are checkpointed, and
            # their renewals clear the checkpoints, through every fault
            lease_checkpoint_interval_s=1.0,
            watch_progress_interval_s=1.0, propose_timeout_s=3.0,
        )
        self.cluster: FaultCluster = self.c
        self.poller: _LeaderPoller | None = _LeaderPoller(self.c)

    def setup(self, schedule: Schedule, res: ScheduleResult) -> None:
        if schedule.broken:
            self.c.unsafe_local_reads(schedule.broken)
            res.applied.append(f"BROKEN({schedule.broken})")
        if schedule.no_sync:
            names = (self.c.names if schedule.no_sync == "all"
                     else [n.strip() for n in schedule.no_sync.split(",")])
            for n in names:
                self.c.unsafe_no_sync(n)
            res.applied.append(f"NO_SYNC({', '.join(names)})")

    async def sentinel(self, seed: int) -> tuple[int, int]:
        """Converge, write the sentinel, converge again: (sentinel revision, converged one)."""
        await asyncio.to_thread(self.c.wait_converged, 30.0)
        async with GrpcRegistryClient(self.c.endpoints, timeout=3.0, retry_budget=20.0) as c:
            end_rev = (await c.put(SENTINEL, f"/zz{seed}")).revision
        st = await asyncio.to_thread(self.c.wait_converged, 30.0)
        return end_rev, st.header.revision

    async def committed_history(self, name: str, end_rev: int) -> list[Event]:
        return await _committed_history(self.c.client[name], end_rev)

    async def state_violations(self, end_rev: int, committed: Sequence[Event]) -> list[str]:
        out: list[str] = []
        replayed = {k: v for k, v in final_state(committed).items()
                    if k.startswith(PREFIX.encode())}
        for n in self.c.names:
            if await _final_state(self.c.client[n], end_rev) != replayed:
                out.append(f"{n}'s state at {end_rev} is not the replayed history")
        return out


class _EtcdTarget:
    """A real etcd (EtcdCluster); every after-heal read goes through EtcdRegistryClient."""

    def __init__(self, root: Path, schedule: Schedule) -> None:
        if schedule.broken:
            raise ValueError("a deliberately broken node exists only for raftreg")
        bad = [st.kind for st in schedule.steps if st.kind in NETWORK_KINDS]
        if bad or schedule.no_sync:
            raise ValueError(f"etcd schedules have no message-level faults (nor no_sync): {bad}")
        # power cuts: explicit schedules only (ETCD_KINDS does not draw them)
        self.c = EtcdCluster(root, power_cuts=schedule.power_cuts,
                             sync_delay_ms=POWER_CUT_SYNC_DELAY_MS,
                             disk_metadata=schedule.disk_metadata)
        self.cluster: FaultCluster = self.c
        self.poller: _LeaderPoller | None = None

    def setup(self, schedule: Schedule, res: ScheduleResult) -> None:
        pass

    async def sentinel(self, seed: int) -> tuple[int, int]:
        """As for raftreg; convergence is "every member's Status reports one revision" (etcd's
        Status has no hash: `state_violations` compares the members' data instead). etcd cannot
        retry a write safely, so a sentinel whose outcome is unknown is followed by another
        (sentinel values are exempt from the written-twice check)."""
        await asyncio.to_thread(self.c.wait_converged, 30.0)
        async with EtcdRegistryClient(self.c.endpoints, timeout=3.0, retry_budget=20.0) as c:
            for i in range(3):
                try:
                    end_rev = (await c.put(SENTINEL, f"/zz{seed}-{i}")).revision
                    break
                except E.OutcomeUnknown:
                    if i == 2:
                        raise
        rev = await asyncio.to_thread(self.c.wait_converged, 30.0)
        return end_rev, rev

    async def committed_history(self, name: str, end_rev: int) -> list[Event]:
        return await _etcd_committed_history(self.c.client[name], end_rev)

    async def state_violations(self, end_rev: int, committed: Sequence[Event]) -> list[str]:
        """Every member's whole data at `end_rev` (a serializable range of every key) is the
        same, and is the replay of the committed history."""
        out: list[str] = []
        replayed = final_state(committed)
        states: dict[str, dict[bytes, KeyValue]] = {}
        for n in self.c.names:
            try:
                states[n] = await _etcd_all_keys(self.c.client[n], end_rev)
            except E.RegistryError as e:
                out.append(f"could not read {n}'s data at {end_rev}: {e}")
        first = self.c.names[0]
        for n, st in states.items():
            if n != first and first in states and st != states[first]:
                diff = sorted(k for k in st.keys() | states[first].keys()
                              if st.get(k) != states[first].get(k))
                out.append(f"{n}'s data at {end_rev} differs from {first}'s: keys {diff[:5]}")
            if st != replayed:
                out.append(f"{n}'s state at {end_rev} is not the replayed history")
        return out


_Target = _RaftregTarget | _EtcdTarget
