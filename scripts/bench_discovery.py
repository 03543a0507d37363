"""Discovery figures, raftreg and etcd side by side.

    .venv/bin/python scripts/bench_discovery.py [--rounds N] [--ttl S] [--backend raftreg|etcd|both]

Per backend (a three-node cluster on loopback, started and killed by this script, one backend at
a time so they never compete for the cores):
- death -> removal: a child process registers an instance (`Registration`, TTL `--ttl`) and is
  killed with SIGKILL at a random point of its renewal cycle; the figure is the time from the
  kill to the instance leaving a `Resolver` in this process. The lease can have been renewed at
  most TTL/3 before the kill, so the expected value is between 2/3 TTL and TTL plus the
  backend's expiry lateness.
- registration -> first call: a real gRPC server registers; the figure is the time from
  `Registration.start()` to the first successful call through `ServiceChannels` in this process
  (a resolver already watching).
The gateway's throughput through discovery is measured by `scripts/bench_gateway.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio

from raftreg.client import connect
from raftreg.discovery import Instance, NoInstance, Registration, Resolver, ServiceChannels
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster

CHILD = """
import asyncio, sys
from raftreg.client import connect
from raftreg.discovery import Instance, Registration
async def main():
    client = connect(sys.argv[1])
    reg = Registration(client, Instance(sys.argv[2], sys.argv[3], "127.0.0.1:1"),
                       ttl=int(sys.argv[4]))
    await reg.start()
    print("READY", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:7.0f} ms   max {max(xs) * 1000:7.0f} ms"


async def death_to_removal(url: str, rounds: int, ttl: int) -> list[float]:
    out: list[float] = []
    client = connect(url)
    try:
        for r in range(rounds):
            service = f"bench-death-{os.getpid()}-{r}"
            async with Resolver(client, service) as res:
                p = subprocess.Popen(
                    [sys.executable, "-c", CHILD, url, service, "i1", str(ttl)],
                    stdout=subprocess.PIPE, text=True,
                )
                try:
                    assert p.stdout is not None
                    line = await asyncio.to_thread(p.stdout.readline)
                    if line.strip() != "READY":
                        raise RuntimeError(f"child did not register: {line!r}")
                    await res.wait_for(lambda i: len(i) == 1, 10)
                    await asyncio.sleep(random.uniform(0, ttl))  # a random point of the cycle
                    killed = time.monotonic()
                    p.send_signal(signal.SIGKILL)
                    await res.wait_for(lambda i: not i, 3 * ttl + 5)
                    out.append(time.monotonic() - killed)
                finally:
                    p.kill()
                    p.wait()
    finally:
        await client.close()
    return out


async def registration_to_first_call(url: str, rounds: int) -> list[float]:
    out: list[float] = []
    writer, reader = connect(url), connect(url)

    async def ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"ok"

    try:
        for r in range(rounds):
            service = f"bench-first-{os.getpid()}-{r}"
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "b.S", {"M": grpc.unary_unary_rpc_method_handler(ok)}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with Resolver(reader, service) as res, ServiceChannels(res) as sc:
                    reg = Registration(writer, Instance(service, "i1", f"127.0.0.1:{port}"))
                    t0 = time.monotonic()
                    await reg.start(wait=False)
                    while True:
                        try:
                            await sc.call(lambda ch: ch.unary_unary("/b.S/M")(b"", timeout=1))
                            break
                        except NoInstance:
                            await res.wait_for(lambda i: bool(i), 10)
                    out.append(time.monotonic() - t0)
                    await reg.stop()
            finally:
                await server.stop(None)
    finally:
        await writer.close()
        await reader.close()
    return out


async def run_backend(name: str, url: str, rounds: int, ttl: int) -> dict[str, list[float]]:
    return {
        "death": await death_to_removal(url, rounds, ttl),
        "first": await registration_to_first_call(url, rounds * 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ttl", type=int, default=3)
    ap.add_argument("--backend", choices=("raftreg", "etcd", "both"), default="both")
    ns = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if ns.backend in ("raftreg", "both"):
            with ProcessCluster(Path(tmp) / "raftreg", min_lease_ttl=2) as c:
                c.start()
                c.wait_leader()
                url = "raftreg://" + ",".join(c.endpoints)
                results["raftreg"] = asyncio.run(run_backend("raftreg", url, ns.rounds, ns.ttl))
        if ns.backend in ("etcd", "both"):
            with EtcdCluster(Path(tmp) / "etcd") as e:
                e.start()
                e.wait_leader()
                results["etcd"] = asyncio.run(run_backend("etcd", e.url, ns.rounds, ns.ttl))
    print(f"load average: {os.getloadavg()[0]:.2f}; TTL {ns.ttl} s; {ns.rounds} kills per backend")
    for label, key in (("death -> removal from a resolver", "death"),
                       ("registration -> first call", "first")):
        print(label)
        for b, res in results.items():
            print(f"  {b:8s} {fmt(res[key])}")
        if len(results) == 2:
            ratio = statistics.median(results["raftreg"][key]) / statistics.median(
                results["etcd"][key])
            print(f"  ratio raftreg/etcd (median) {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
