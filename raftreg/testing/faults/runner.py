"""The runner: `run_schedule` runs one `Schedule` on a fresh cluster under the recorded
workload, heals, and collects every violation into a `ScheduleResult`.

It owns the order of a run (start, steps with their holds, heal, settle, stop the workload,
sentinel, after-heal reads, checks) and the limits of the checks that wait
(`WATCH_CATCH_UP_S`, `LINCHECK_TIMEOUT_S`). `run_schedule` is synchronous and runs its own
event loop (`asyncio.run`); the driver and every blocking cluster call run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from pathlib import Path

import grpc

from raftreg import errors as E
from raftreg.testing import lincheck as L
from raftreg.testing.faults.apply import _Driver
from raftreg.testing.faults.checks import _check_writes, _wait_watches
from raftreg.testing.faults.schedule import Schedule, ScheduleResult
from raftreg.testing.faults.targets import _EtcdTarget, _RaftregTarget, _Target
from raftreg.testing.history import BACKENDS, PREFIX, History, Workload, WorkloadConfig
from raftreg.testing.powercut import unmount_stale
from raftreg.testing.watchcheck import check_committed, check_watch

# After healing, how long the watches get to deliver the last committed revision before the
# ones still behind are reported as lagging (a liveness failure, reported as such).
WATCH_CATCH_UP_S = 60.0
# The linearizability check's limit. A schedule's history takes well under a second to check;
# an undecided check is reported as a violation, never passed silently.
LINCHECK_TIMEOUT_S = 120.0


async def _run(schedule: Schedule, root: Path, wcfg: WorkloadConfig,
               settle_s: float) -> ScheduleResult:
    if schedule.backend not in BACKENDS:
        raise ValueError(f"unknown backend {schedule.backend!r}")
    res = ScheduleResult(schedule, root=str(root))
    rng = random.Random(schedule.seed)
    t0 = time.monotonic()
    target: _Target = (_EtcdTarget(root, schedule) if schedule.backend == "etcd"
                       else _RaftregTarget(root, schedule))
    cluster = target.cluster
    to_thread = asyncio.to_thread
    h = History()
    wl = Workload(target.c.endpoints, h, random.Random(rng.getrandbits(64)), wcfg,
                  backend=schedule.backend)
    driver = _Driver(cluster, random.Random(rng.getrandbits(64)))
    stop_ops, stop_watches, stop_polls = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ops: list[asyncio.Future[None]] = []
    watches: list[asyncio.Future[None]] = []
    polls: list[asyncio.Future[None]] = []
    try:
        await to_thread(cluster.start)
        if target.poller is not None:
            polls.append(asyncio.ensure_future(target.poller.run(stop_polls)))
        await to_thread(cluster.wait_leader, 30.0)
        target.setup(schedule, res)
        ops, watches = wl.start(stop_ops, stop_watches)
        await asyncio.sleep(0.5)
        for step in schedule.steps:
            res.violations += driver.exits()
            res.applied.append(await to_thread(driver.apply, step))
            await asyncio.sleep(step.hold)
            await to_thread(driver.after_hold, step)
        res.violations += driver.exits()
        await to_thread(cluster.heal)
        try:
            await to_thread(cluster.wait_leader, 30.0)
        except TimeoutError as e:
            res.violations.append(f"no leader after healing: {e}")
        await asyncio.sleep(settle_s)
        for n in cluster.names:
            if not cluster.alive(n):
                code = cluster.procs[n].returncode if n in cluster.procs else None
                tail = cluster.log_text(n)[-1500:]
                res.violations.append(f"{n} exited by itself (code {code}); log tail:\n{tail}")
        stop_ops.set()
        await asyncio.gather(*ops, return_exceptions=True)
        res.counts = h.counts()
        stop_polls.set()
        await asyncio.gather(*polls, return_exceptions=True)
        if target.poller is not None:
            res.leaders = {t: sorted(ns) for t, ns in target.poller.claims.items()}
            res.counts["status_polls"] = target.poller.polls
            res.counts["status_polls:fail"] = target.poller.failed
            res.violations += target.poller.violations()
        try:
            end_rev, converged_rev = await target.sentinel(schedule.seed)
        except (TimeoutError, E.RegistryError) as e:
            res.violations.append(f"no convergence after healing: {e}")
            return res
        if converged_rev < end_rev:
            res.violations.append(f"converged at {converged_rev} < sentinel {end_rev}")
        try:
            histories = [await target.committed_history(n, end_rev) for n in cluster.names]
        except (TimeoutError, grpc.aio.AioRpcError, E.RegistryError) as e:
            codes = {n: p.poll() for n, p in cluster.procs.items()}
            res.violations.append(f"could not read the committed history (exit codes {codes}, "
                                  f"{time.monotonic() - t0:.1f}s): {e}")
            return res
        committed = [e for e in histories[0] if e.kv.mod_revision <= end_rev]
        first = cluster.names[0]
        for n, other in zip(cluster.names[1:], histories[1:], strict=True):
            mine = [e for e in other if e.kv.mod_revision <= end_rev]
            if mine != committed:
                diff = next((i for i, (x, y) in enumerate(zip(committed, mine, strict=False))
                             if x != y), min(len(committed), len(mine)))
                res.violations.append(
                    f"{n}'s committed history differs from {first}'s at event {diff}")
        res.violations += check_committed(committed)
        res.violations += await target.state_violations(end_rev, committed)
        res.violations += _check_writes(h, committed)
        lagging = await _wait_watches(wl, committed, WATCH_CATCH_UP_S)
        stop_watches.set()
        await asyncio.gather(*watches, return_exceptions=True)
        res.violations += lagging.values()
        fcommitted = [e for e in committed if e.kv.key.startswith(PREFIX.encode())]
        for w in wl.watches:
            res.violations += check_watch(w, fcommitted, complete=w.name not in lagging,
                                          until=end_rev)
        res.violations += h.violations
        res.violations += [f"client raised outside the error tree: {u}" for u in h.unexpected]
        checked = h.lincheck_ops()
        lin = await to_thread(L.check, L.KVModel(), checked, LINCHECK_TIMEOUT_S)
        res.lincheck = lin.explain()
        if lin.ok is False:
            res.violations.append("register history is not linearizable:\n" + lin.explain())
        elif lin.ok is None:  # an unchecked history proves nothing: never a silent pass
            res.lincheck = "undecided (timeout) " + res.lincheck
            res.violations.append(
                f"linearizability undecided: the checker did not finish within "
                f"{LINCHECK_TIMEOUT_S:g}s ({len(checked)} operations); nothing was proven about "
                f"this history. Replay the schedule with a longer limit or fewer operations "
                f"(LINCHECK_TIMEOUT_S in raftreg/testing/faults/runner.py)")
    finally:
        stop_ops.set()
        stop_watches.set()
        stop_polls.set()
        for t in ops + watches + polls:
            t.cancel()
        await asyncio.gather(*ops, *watches, *polls, return_exceptions=True)
        await wl.close()
        await to_thread(cluster.close)
        res.elapsed = time.monotonic() - t0
        if res.violations:  # kept with the logs: the recorded operations, for the diagnosis
            with contextlib.suppress(OSError, TypeError, ValueError):
                (root / "history.json").write_text(json.dumps(h.to_json()) + "\n")
    return res


def run_schedule(
    schedule: Schedule,
    root: Path,
    *,
    workload: WorkloadConfig | None = None,
    settle_s: float = 1.0,
    keep: bool = False,
) -> ScheduleResult:
    """Run one schedule on a fresh cluster (raftreg's, or a real etcd for
    `schedule.backend == "etcd"`) under `root` and check it. A cluster left in `root` by an
    earlier run is removed first; this one (logs, data) is removed afterwards unless the
    schedule failed (then `root/history.json` holds the recorded operations) or `keep` is
    set."""
    if (root / "cluster.toml").exists() or any(root.glob("*.etcd")):  # a previous run's
        unmount_stale(root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(_run(schedule, root, workload or WorkloadConfig(), settle_s))
    if res.ok and not keep:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    return res
