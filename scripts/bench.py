"""Registry-core benchmark on a real three-process cluster on loopback.

    .venv/bin/python scripts/bench.py [--quick]

Prints: sequential put latency, put throughput at 64 and 256 in flight, sequential
linearizable and serializable gets, time from leader kill -9 to the first acknowledged write,
and each node's RSS holding 100,000 keys of 100 bytes. Sequential figures use plain grpc.aio
unary stubs (the kind of client the etcd figures in the issue were taken with); the in-flight
figures are given twice: plain unary stubs, and raftreg's client, which multiplexes concurrent
operations over one KV.Batch stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from raftreg.client import GrpcRegistryClient
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import ProcessCluster

VALUE64 = b"v" * 64


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def seq_put(stub: pbg.KVStub, n: int) -> dict[str, float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await stub.Put(pb.PutRequest(key=b"seq/%d" % i, value=VALUE64))
        lat.append(time.perf_counter() - t)
    return {"p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "ops_s": n / sum(lat)}


async def par_put(stubs: list[pbg.KVStub], inflight: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        stub = stubs[w % len(stubs)]
        i = 0
        while time.perf_counter() < stop:
            await stub.Put(pb.PutRequest(key=b"par/%d/%d" % (w, i), value=VALUE64))
            i += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    return done / (time.perf_counter() - t0)


async def par_put_client(endpoints: list[str], inflight: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with GrpcRegistryClient(endpoints) as client:
        await client.put(b"warm", VALUE64)

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                await client.put(b"cpar/%d/%d" % (w, i), VALUE64)
                i += 1
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(inflight)))
        return done / (time.perf_counter() - t0)


async def seq_get(stub: pbg.KVStub, n: int, serializable: bool) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await stub.Range(pb.RangeRequest(key=b"seq/%d" % (i % 100), serializable=serializable))
    return n / (time.perf_counter() - t0)


async def failover(c: ProcessCluster) -> float:
    chans = {n: grpc.aio.insecure_channel(c.client[n]) for n in c.names}
    stubs = {n: pbg.KVStub(ch) for n, ch in chans.items()}
    leader = c.wait_leader()
    others = [n for n in c.names if n != leader]
    for i in range(50):
        await stubs[others[0]].Put(pb.PutRequest(key=b"fo/warm/%d" % i, value=VALUE64))
    c.kill(leader)
    t_kill = time.perf_counter()
    i = 0
    while True:
        stub = stubs[others[i % 2]]
        i += 1
        try:
            await stub.Put(pb.PutRequest(key=b"fo/after", value=VALUE64), timeout=1.0)
            took = time.perf_counter() - t_kill
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
    for ch in chans.values():
        await ch.close()
    c.start(leader)
    return took


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def fill(stubs: list[pbg.KVStub], n: int) -> None:
    value = b"x" * 100
    sem = asyncio.Semaphore(128)

    async def put(i: int) -> None:
        async with sem:
            await stubs[i % len(stubs)].Put(pb.PutRequest(key=b"mem/%08d" % i, value=value))

    await asyncio.gather(*(put(i) for i in range(n)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    a = ap.parse_args()
    n_seq = 500 if a.quick else 3000
    secs = 3.0 if a.quick else 8.0
    n_mem = 10_000 if a.quick else 100_000
    with tempfile.TemporaryDirectory() as tmp, ProcessCluster(Path(tmp)) as c:
        c.start()
        leader = c.wait_leader()
        ch = grpc.aio.insecure_channel(c.client[leader])
        stub = pbg.KVStub(ch)
        res = await seq_put(stub, n_seq)
        print(f"sequential put        p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
              f"({res['ops_s']:.0f}/s)")
        extra = [grpc.aio.insecure_channel(c.client[leader]) for _ in range(3)]
        stubs = [stub] + [pbg.KVStub(x) for x in extra]
        for inflight in (64, 256):
            unary = await par_put(stubs, inflight, secs)
            mux = await par_put_client(c.endpoints, inflight, secs)
            print(f"put, {inflight:3d} in flight     unary {unary:.0f}/s, "
                  f"raftreg client {mux:.0f}/s")
        print(f"linearizable get      {await seq_get(stub, n_seq, False):.0f}/s (sequential)")
        print(f"serializable get      {await seq_get(stub, n_seq, True):.0f}/s (sequential)")
        await fill(stubs, n_mem)
        for x in [ch, *extra]:
            await x.close()
        c.wait_converged(timeout=60)
        rss = {n: rss_kib(c.procs[n].pid) for n in c.names}
        print(f"RSS with {n_mem} keys of 100 B: "
              + ", ".join(f"{n} {v / 1024:.0f} MiB" for n, v in rss.items()))
        took = [await failover(c) for _ in range(1 if a.quick else 3)]
        print("leader kill -9 -> first acked write: "
              + ", ".join(f"{t:.2f}s" for t in took)
              + f" (median {statistics.median(took):.2f}s)")
        print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
