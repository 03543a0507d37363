"""etcd's own performance check, the same etcdctl against raftreg and a real etcd, side by side.

    .venv/bin/python scripts/bench_check_perf.py [--load s|m|l|xl ...]

For each load, a fresh three-node raftreg cluster and a fresh three-node etcd 3.5.1 (both on
loopback, both fsyncing) each get `etcdctl check perf --load=<load>` (60 s of 256-byte-key,
1 KiB-value puts at the load's rate from its number of clients). Prints etcdctl's verdicts and
a table: pass/fail, writes/s, slowest request, stddev, and raftreg's ratio to etcd.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster, etcd_binary

FIGURES = {  # etcdctl prints each figure in its PASS line and in its FAIL line
    "writes/s": re.compile(r"Throughput (?:is|too low:) (\d+) writes/s"),
    "slowest s": re.compile(r"Slowest request took (?:too long: )?([\d.]+)s"),
    "stddev s": re.compile(r"Stddev (?:is|too high:) ([\d.]+)s"),
}
ERRORS = re.compile(r"ERROR\((.*)\) -> (\d+)")


def check_perf(endpoints: list[str], load: str) -> tuple[str, dict[str, float], str]:
    out = subprocess.run(
        [str(etcd_binary("etcdctl")), f"--endpoints={','.join(endpoints)}", "check", "perf",
         f"--load={load}"], capture_output=True, text=True, timeout=300)
    text = out.stdout.replace("\r", "\n")
    verdicts = [line.strip() for line in text.splitlines() if "PASS" in line or "FAIL" in line]
    figures = {name: float(m.group(1)) for name, rx in FIGURES.items()
               if (m := rx.search(text)) is not None}
    figures["errors"] = float(sum(int(n) for _, n in ERRORS.findall(text)))
    verdict = verdicts[-1] if verdicts else f"error: {out.stderr.strip()[-200:]}"
    return verdict, figures, "\n".join(verdicts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", action="append", choices=["s", "m", "l", "xl"])
    loads = p.parse_args().load or ["s", "m"]
    rows = []
    for load in loads:
        results = {}
        for kind in ("raftreg", "etcd"):
            with tempfile.TemporaryDirectory() as tmp:
                cluster: ProcessCluster | EtcdCluster = (
                    ProcessCluster(Path(tmp)) if kind == "raftreg" else EtcdCluster(Path(tmp)))
                with cluster:
                    cluster.start()
                    cluster.wait_leader()
                    results[kind] = check_perf(list(cluster.endpoints), load)
            print(f"--- load={load} {kind}\n{results[kind][2]}", flush=True)
        rows.append((load, results))
    print("\n| load | backend | verdict | writes/s | slowest (s) | stddev (s) | errors |")
    print("|---|---|---|---|---|---|---|")
    for load, results in rows:
        for kind, (verdict, figs, _) in results.items():
            print(f"| {load} | {kind} | {verdict} | {figs.get('writes/s', '-')} | "
                  f"{figs.get('slowest s', '-')} | {figs.get('stddev s', '-')} | "
                  f"{figs['errors']:.0f} |")
        r, e = results["raftreg"][1], results["etcd"][1]
        if "writes/s" in r and "writes/s" in e:
            print(f"| {load} | raftreg/etcd | | {r['writes/s'] / e['writes/s']:.2f} | "
                  f"{r.get('slowest s', 0) / max(e.get('slowest s', 0), 1e-9):.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
