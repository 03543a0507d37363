"""Fault schedules against a real three-process cluster, and the checks after each one.

The cluster is raftreg's (`ProcessCluster`, the default) or a real etcd 3.5
(`raftreg.testing.etcd.EtcdCluster`, `Schedule(..., backend="etcd")`): the same workload and the
same checkers run against both, so a checker that flags etcd is suspect first (or etcd has a
bug: see docs/fault-tests.md for the one etcd 3.5.1 bug they catch). etcd gets the faults
that apply to a cluster whose transport we do not control (`ETCD_KINDS`: kill, kill_all,
pause, restart, heal, none; no message-level partitions, drops or delays), its workload goes
through `EtcdRegistryClient` only (watches included), and the after-heal reads use what etcd
offers: catch-up watches from revision 1 through the client, Status revisions per member, and a
full serializable range per member at the same revision instead of a hash.

A `Schedule` is a seed plus a list of `Step`s. Each step puts the cluster into a fault state
and holds it for `hold` seconds while the recorded workload (`raftreg.testing.history`) runs:

=============  ==================================================================================
kind           effect (targets: "leader", "follower" or a node name, resolved when applied)
=============  ==================================================================================
partition      full partition between `a` and `b` (raft traffic both ways)
one_way        raft messages from `a` to `b` dropped, the other direction works
isolate        `a` cut off from both other nodes
drop           every raft message dropped with probability `value`
delay          every raft message delayed by `value` ms (FIFO per link)
kill           kill -9 `a`; it stays down until a heal
kill_all       kill -9 every node, hold, start them all again
power_cut      kill -9 `a`, drop every write it had not synced, start it at once (value 1: torn,
               i.e. unsynced tails may survive in part; see raftreg.testing.powercut)
power_cut_all  kill -9 every node, drop every unsynced write on every node, hold, start them all
pause          SIGSTOP `a`; SIGCONT at the next heal
restart        kill -9 `a` and start it at once
heal           everything back: network healed, paused nodes resumed, dead nodes started
none           no new fault (faults in force stay)
=============  ==================================================================================

Faults accumulate until a heal. After the last step the runner heals, lets the workload run a
moment on the healthy cluster, stops it, and checks (`run_schedule`):

- every node converges (same revision, same hash) and reports the same committed history
  (a catch-up watch from revision 1, ended by a sentinel write);
- the committed history is consistent on its own and replays to every node's final state;
- every acknowledged write is in the committed history at the revision it was acknowledged
  with; a write reported failed is not in it; no write is applied twice (values are unique);
- the register history is linearizable (`lincheck.KVModel`, per key);
- every watch stream is ordered, gapless, duplicate-free, whole per revision, resumed
  correctly, complete, with correct prev_kv (`watchcheck`); a watch that has not caught up
  `WATCH_CATCH_UP_S` after the history was read is reported as "watch lagging" (a liveness
  failure, not a gap);
- no lease expired before its TTL (checked live by the lease clients);
- no two nodes said they were leader in the same term (each node's Status, polled all along).

Power cuts run each node on the power-cut file system (only for schedules that have them, or a
node with syncing switched off: `Schedule.no_sync`, TEST ONLY, a node that must be caught
losing acknowledged writes).

A linearizability check that does not finish within `LINCHECK_TIMEOUT_S` is a violation
("linearizability undecided"): a schedule never passes on a history nobody checked.

`random_schedule(rng, seed, backend=...)` draws schedules without hypothesis (the soak
script); the fault tests draw them with the hypothesis strategy in tests/fault/. Schedules
round-trip through JSON (`Schedule.to_json` / `from_json`) so a failing one can be saved and
replayed.

The package, one concept per module (this module re-exports every name used elsewhere):
`schedule` (kinds, `Step`, `Schedule`, drawing, `ScheduleResult`, JSON for replay), `apply`
(`FaultCluster`, `_Driver`: putting a cluster into a fault state), `checks` (the after-heal
reads, the write/watch checks, the per-term leader poller), `targets` (raftreg vs etcd behind
one interface), `runner` (`run_schedule`: the order of a run and the waits' limits).
"""

from raftreg.testing.faults.apply import FaultCluster, _Driver
from raftreg.testing.faults.checks import STATUS_POLL_S, _LeaderPoller
from raftreg.testing.faults.runner import LINCHECK_TIMEOUT_S, WATCH_CATCH_UP_S, run_schedule
from raftreg.testing.faults.schedule import (
    DELAYS_MS,
    DROP_RATES,
    ETCD_KINDS,
    ETCD_TARGETS,
    HOLDS,
    KINDS,
    NETWORK_KINDS,
    POWER_KINDS,
    TARGETS,
    Schedule,
    ScheduleResult,
    Step,
    load_schedule,
    make_step,
    random_schedule,
    save_failure,
)
from raftreg.testing.faults.targets import (
    POWER_CUT_SYNC_DELAY_MS,
    SENTINEL,
    _EtcdTarget,
    _RaftregTarget,
)

__all__ = [
    "DELAYS_MS",
    "DROP_RATES",
    "ETCD_KINDS",
    "ETCD_TARGETS",
    "HOLDS",
    "KINDS",
    "LINCHECK_TIMEOUT_S",
    "NETWORK_KINDS",
    "POWER_CUT_SYNC_DELAY_MS",
    "POWER_KINDS",
    "SENTINEL",
    "STATUS_POLL_S",
    "TARGETS",
    "WATCH_CATCH_UP_S",
    "FaultCluster",
    "Schedule",
    "ScheduleResult",
    "Step",
    "_Driver",
    "_EtcdTarget",
    "_LeaderPoller",
    "_RaftregTarget",
    "load_schedule",
    "make_step",
    "random_schedule",
    "run_schedule",
    "save_failure",
]
