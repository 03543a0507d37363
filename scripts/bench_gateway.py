"""Gateway throughput through discovery, against calling one user instance directly.

    .venv/bin/python scripts/bench_gateway.py [--backend both|raftreg|etcd] [--concurrency 32]
        [--duration 10] [--warmup 2] [--users 3]

Per backend (a three-node cluster on loopback in a temporary directory, started and killed by
this script; with `both`, one backend after the other so they never compete for the cores):
3 `services.user` instances and 1 `services.gateway` (round_robin) as real processes, then an
aiohttp client in this process at a fixed concurrency, for a fixed duration after a warm-up:
(a) GET /user?id=N through the gateway (the gateway's resolver cache, balancing, gRPC to a
user instance, JSON); (b) GET /user?id=N on ONE user instance's own HTTP endpoint. Printed:
requests/s, p50 / p99 latency, failures, the ratio gateway / direct, the gateway's calls per
instance and the load average. The registry is off the request path (the gateway answers from
its resolver's cache), so the gateway figure should be about the same on raftreg and etcd.

Everything shares this machine's cores with the load generator (one Python process), so the
absolute figures are a floor; the ratio is the part to read. About 30 s per backend (the
default, both, about a minute). Exit code 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster
from services.testing import ServiceGroup, get_json, instance_ids, wait_stats

USER_IDS = (1, 2, 3, 4, 5)


@dataclass(slots=True)
class Run:
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of successful requests, seconds

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile latency in ms (0 without successes)."""
        if not self.latencies:
            return 0.0
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000


async def load(
    session: aiohttp.ClientSession, base: str, concurrency: int, duration: float
) -> Run:
    """`concurrency` workers sending GET {base}/user?id=N back to back for `duration` s."""
    run = Run()
    stop_at = time.monotonic() + duration

    async def worker(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            url = f"{base}/user?id={USER_IDS[i % len(USER_IDS)]}"
            i += 1
            t0 = time.perf_counter()
            try:
                async with session.get(url) as r:
                    await r.read()
                    good = r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                good = False
            if good:
                run.ok += 1
                run.latencies.append(time.perf_counter() - t0)
            else:
                run.failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    run.seconds = time.monotonic() - t0
    return run


async def measure(
    gateway: str, direct: str, concurrency: int, duration: float, warmup: float
) -> tuple[Run, Run, dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        await wait_stats(s, gateway, lambda st: len(instance_ids(st)) > 0)
        await load(s, gateway, concurrency, warmup)
        before = (await get_json(s, f"{gateway}/stats"))[1]["served"]
        via_gateway = await load(s, gateway, concurrency, duration)
        after = (await get_json(s, f"{gateway}/stats"))[1]["served"]
        await load(s, direct, concurrency, warmup)
        direct_run = await load(s, direct, concurrency, duration)
    served = {k: v - before.get(k, 0) for k, v in after.items()}
    return via_gateway, direct_run, served


def run_backend(
    name: str, registry: str, root: Path, ns: argparse.Namespace
) -> tuple[Run, Run, dict[str, Any]]:
    with ServiceGroup(root / "services", registry) as g:
        users = [(f"u{i}", ["--ttl", "10"]) for i in range(1, ns.users + 1)]
        procs = g.start_many([("user", u, a) for u, a in users] +
                             [("gateway", "g1", ["--policy", "round_robin"])])
        gateway, first_user = procs[-1].http_url, procs[0].http_url
        print(f"[{name}] {ns.users} user instances and a gateway up; measuring "
              f"{ns.duration:.0f} s at concurrency {ns.concurrency} (after {ns.warmup:.0f} s "
              f"warm-up) through the gateway, then directly on u1", flush=True)
        result = asyncio.run(
            measure(gateway, first_user, ns.concurrency, ns.duration, ns.warmup)
        )
        for n in list(g.procs):
            g.terminate(n)
        return result


def row(label: str, r: Run) -> str:
    return (f"  {label:30s} {r.rps:8.0f} req/s   p50 {r.pct(50):6.1f} ms   "
            f"p99 {r.pct(99):6.1f} ms   failures {r.failed}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--backend", choices=("raftreg", "etcd", "both"), default="both")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per target")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds discarded per target")
    ap.add_argument("--users", type=int, default=3, help="user instances behind the gateway")
    ns = ap.parse_args()
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    results: dict[str, tuple[Run, Run, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        if ns.backend in ("raftreg", "both"):
            with ProcessCluster(Path(tmp) / "raftreg") as c:
                c.start()
                c.wait_leader()
                url = "raftreg://" + ",".join(c.endpoints)
                results["raftreg"] = run_backend("raftreg", url, Path(tmp) / "raftreg", ns)
        if ns.backend in ("etcd", "both"):
            with EtcdCluster(Path(tmp) / "etcd") as e:
                e.start()
                e.wait_leader()
                results["etcd"] = run_backend("etcd", e.url, Path(tmp) / "etcd", ns)
    print(f"\nGET /user, concurrency {ns.concurrency}, {ns.duration:.0f} s each, "
          f"{ns.users} user instances; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {time.monotonic() - t0:.0f} s in all")
    for name, (gw, direct, served) in results.items():
        print(f"registry: {name}")
        print(row("through the gateway", gw))
        print(row("directly on one user instance", direct))
        ratio = gw.rps / direct.rps if direct.rps else float("nan")
        print(f"  ratio gateway / direct          {ratio:8.2f}")
        print(f"  gateway calls per instance      {dict(sorted(served.items()))}")
    if len(results) == 2:
        r = results["raftreg"][0].rps / results["etcd"][0].rps if results["etcd"][0].rps else 0
        print(f"gateway req/s raftreg / etcd: {r:.2f}")
    print("The registry is off the request path (the gateway routes from its resolver's "
          "cache), so the gateway figure should be about the same on either backend.")
    failures = sum(gw.failed + direct.failed for gw, direct, _ in results.values())
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
