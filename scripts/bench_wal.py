"""Write path with the durable raft log: latency, throughput and fdatasyncs per write.

    .venv/bin/python scripts/bench_wal.py [--seconds 6] [--seq 1000] [--data-dir DIR]

On a fresh three-process cluster on loopback: sequential put latency (unary Put to the
leader), puts/s at 64 and 256 in flight (unary Puts over 4 channels to the leader, and
raftreg's client, which multiplexes them over one KV.Batch stream), and for each phase the WAL
fdatasyncs per acknowledged write read from /metrics (`raftreg_raft_wal_fdatasyncs_total`,
leader and the mean of the followers). A tree without that metric (before the durable log)
reports "-". `--data-dir` puts the cluster on a given file system (the fsync cost depends on
it; the default is the system temp dir); `--setting k=v` sets a [cluster] setting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from raftreg.client import GrpcRegistryClient
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import ProcessCluster

VALUE64 = b"v" * 64
METRIC = "raftreg_raft_wal_fdatasyncs_total"


def syncs(c: ProcessCluster) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for n in c.names:
        with urllib.request.urlopen(f"http://{c.http[n]}/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next((x for x in text.splitlines() if x.startswith(METRIC + " ")), None)
        out[n] = None if line is None else float(line.split()[1])
    return out


def per_write(before: dict[str, float | None], after: dict[str, float | None], leader: str,
              writes: int) -> str:
    if before[leader] is None or writes == 0:
        return "fdatasyncs/write -"
    d = {n: (after[n] or 0.0) - (before[n] or 0.0) for n in before}
    fol = [d[n] for n in d if n != leader]
    return (f"fdatasyncs/write leader {d[leader] / writes:.3f}, "
            f"followers {sum(fol) / len(fol) / writes:.3f}")


async def seq_put(stub: Any, n: int) -> tuple[float, float, float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await stub.Put(pb.PutRequest(key=b"seq/%d" % i, value=VALUE64))
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, n / sum(lat)


async def par_unary(stubs: list[Any], inflight: int, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        stub, i = stubs[w % len(stubs)], 0
        while time.perf_counter() < stop:
            await stub.Put(pb.PutRequest(key=b"par/%d/%d" % (w, i), value=VALUE64))
            i += 1
            done += 1

    await asyncio.gather(*(worker(w) for w in range(inflight)))
    return done


async def par_client(client: GrpcRegistryClient, inflight: int, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            await client.put(b"cpar/%d/%d" % (w, i), VALUE64)
            i += 1
            done += 1

    await asyncio.gather(*(worker(w) for w in range(inflight)))
    return done


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """`k=v` [cluster] settings for a `ProcessCluster`: integers and decimals become numbers,
    true/false booleans, anything else stays text."""
    settings: dict[str, Any] = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        if v in ("true", "false"):
            settings[k] = v == "true"
            continue
        for kind in (int, float):
            try:
                settings[k] = kind(v)
                break
            except ValueError:
                settings[k] = v
    return settings


async def run(a: argparse.Namespace, root: Path) -> None:
    settings = parse_settings(a.setting)
    with ProcessCluster(root, **settings) as c:
        c.start()
        leader = c.wait_leader()
        chans = [grpc.aio.insecure_channel(c.client[leader]) for _ in range(4)]
        stubs: list[Any] = [pbg.KVStub(ch) for ch in chans]
        for i in range(50):  # warm up
            await stubs[0].Put(pb.PutRequest(key=b"warm/%d" % i, value=VALUE64))
        s0 = syncs(c)
        p50, p99, rate = await seq_put(stubs[0], a.seq)
        print(f"sequential put (1 in flight): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"{rate:.0f}/s; {per_write(s0, syncs(c), leader, a.seq)}", flush=True)
        for inflight in (64, 256):
            s0 = syncs(c)
            t0 = time.perf_counter()
            done = await par_unary(stubs, inflight, a.seconds)
            el = time.perf_counter() - t0
            print(f"{inflight:3d} in flight, unary Put: {done / el:.0f}/s; "
                  f"{per_write(s0, syncs(c), leader, done)}", flush=True)
        async with GrpcRegistryClient([c.client[leader]]) as client:
            await client.put(b"warm", VALUE64)
            for inflight in (64, 256):
                s0 = syncs(c)
                t0 = time.perf_counter()
                done = await par_client(client, inflight, a.seconds)
                el = time.perf_counter() - t0
                print(f"{inflight:3d} in flight, raftreg client: {done / el:.0f}/s; "
                      f"{per_write(s0, syncs(c), leader, done)}", flush=True)
        for ch in chans:
            await ch.close(None)
        print(f"cpu count {os.cpu_count()}, data on {root}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--seq", type=int, default=1000)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--setting", action="append", default=[],
                    help="a [cluster] setting for the cluster, e.g. max_inflight_batches=4")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(dir=a.data_dir) as tmp:
        asyncio.run(run(a, Path(tmp)))


if __name__ == "__main__":
    main()
