"""Each node's HTTP listener and introspection: Prometheus metrics that parse and move under
load, etcd's /health and /version, and gRPC server reflection."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftreg import __version__
from raftreg.client import GrpcRegistryClient
from raftreg.errors import LeaseNotFound
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# a member alone has no leader once its election timeout (0.8 s) passes; x many
HEALTH_BOUND_S = 20.0

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Metrics:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_total(scrapes: dict[str, Metrics]) -> Metrics:
    """`grpc_server_handled_total` summed over the nodes (a call is counted by the node
    that served it, whichever one that was)."""
    out: Metrics = {}
    for m in scrapes.values():
        for k, v in m.items():
            if k[0] == "grpc_server_handled_total":
                out[k] = out.get(k, 0.0) + v
    return out


async def test_metrics_parse_and_move_under_load(shared_cluster: ProcessCluster) -> None:
    c = shared_cluster
    # The leader and each node's scrape are separate calls: an election between two of them
    # is no disagreement, so the whole snapshot is retaken until exactly the leader says it
    # leads (bounded: a lasting disagreement still fails).
    deadline = time.monotonic() + 10
    while True:
        leader = c.wait_leader()
        before = {n: scrape(c.http[n]) for n in c.names}
        leaders = [n for n, m in before.items() if value(m, "etcd_server_is_leader") == 1]
        if leaders == [leader]:
            break
        assert time.monotonic() < deadline, f"{leader} leads but {leaders} say they do"
        time.sleep(0.05)
    assert sum(value(m, "etcd_server_is_leader") for m in before.values()) == 1
    assert all(value(m, "raftreg_raft_term") >= 1 for m in before.values())
    async with GrpcRegistryClient(c.endpoints) as client:
        await asyncio.gather(*(client.put(f"metrics/k{i}", "v") for i in range(200)))
        g = await client.lease_grant(30)
        assert (await client.status(c.client[leader])).db_size > 0  # the data dir's bytes
        await client.get("metrics/", prefix=True)
        w = await client.watch("metrics/", prefix=True)  # returns once the server confirmed it
        watchers = sum(value(scrape(c.http[n]), "etcd_debugging_mvcc_watcher_total")
                       for n in c.names)
        leases = value(scrape(c.http[leader]), "raftreg_leases")
        w.cancel()
        await client.lease_revoke(g.id)
        with pytest.raises(LeaseNotFound):
            await client.lease_revoke(g.id)
        # grpc.aio sends an aborted call's status before the handler's `finally` counts it, so
        # the client can see NOT_FOUND a moment before any scrape does: wait for the count
        deadline = time.monotonic() + 10
        while True:
            everywhere = {n: scrape(c.http[n]) for n in c.names}
            if value(requests_total(everywhere), "grpc_server_handled_total", grpc_type="unary",
                     grpc_service="raftreg.v1.Lease", grpc_method="LeaseRevoke",
                     grpc_code="NOT_FOUND") >= 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    b = before[leader]

    def most(name: str) -> float:  # whichever node leads by now: the one furthest along
        return max(value(m, name) for m in everywhere.values())

    for name, grew in (("etcd_debugging_mvcc_current_revision", 200),
                       ("etcd_debugging_mvcc_keys_total", 200),
                       ("etcd_server_proposals_applied_total", 1)):
        assert most(name) >= value(b, name) + grew, name
    # group commit: the 200 concurrent puts took at least one fdatasync on the node that led at
    # the start (leader or follower by now, it logs every entry), far fewer than one each
    syncs = (value(everywhere[leader], "raftreg_raft_wal_fdatasyncs_total")
             - value(b, "raftreg_raft_wal_fdatasyncs_total"))
    assert 1 <= syncs < 200
    assert leases >= 1
    # requests by method and status; the client reached the leader over KV.Batch or unary Put
    reqs = requests_total(everywhere)
    assert value(reqs, "grpc_server_handled_total", grpc_type="unary",
                 grpc_service="raftreg.v1.Lease", grpc_method="LeaseGrant", grpc_code="OK") >= 1
    assert sum(reqs.values()) > sum(requests_total(before).values())
    assert sum(value(m, "grpc_server_handling_seconds_count", grpc_type="unary",
                     grpc_service="raftreg.v1.Lease", grpc_method="LeaseGrant")
               for m in everywhere.values()) >= 1
    assert value(reqs, "grpc_server_handled_total", grpc_type="unary",
                 grpc_service="raftreg.v1.Lease", grpc_method="LeaseRevoke",
                 grpc_code="NOT_FOUND") >= 1
    assert all(value(m, "etcd_server_has_leader") == 1 for m in everywhere.values())
    assert all(value(m, "process_resident_memory_bytes") > 0 for m in everywhere.values())
    assert watchers >= 1  # on whichever node the client's watch stream went to
    assert all(("etcd_server_proposals_pending", ()) in m for m in everywhere.values())


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_health_and_version_as_etcd_shapes_them(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c") as c:
        c.start()
        c.wait_leader()
        for name in c.names:
            assert _get(f"http://{c.http[name]}/health") == (200, {"health": "true",
                                                                   "reason": ""})
        status, doc = _get(f"http://{c.http['n1']}/version")
        assert status == 200 and doc["raftreg"] == __version__
        # a member cut off from the others has no leader: unhealthy, with etcd's reason
        c.kill("n2")
        c.kill("n3")
        deadline = time.monotonic() + HEALTH_BOUND_S
        while _get(f"http://{c.http['n1']}/health") != (
                503, {"health": "false", "reason": "RAFT NO LEADER"}):
            assert time.monotonic() < deadline, _get(f"http://{c.http['n1']}/health")
            time.sleep(0.1)


def test_reflection_lists_raftregs_services(shared_cluster: ProcessCluster) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(shared_cluster.endpoints[0]) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"raftreg.v1.KV", "raftreg.v1.Watch", "raftreg.v1.Lease", "raftreg.v1.Cluster",
                "raftreg.v1.Maintenance", "grpc.health.v1.Health"} <= services
        assert db.FindFileContainingSymbol("raftreg.v1.KV").name.endswith("raftreg.proto")
