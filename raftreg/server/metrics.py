"""A node's Prometheus metrics: served as text on `GET /metrics` at the node's `metrics` address.

What is exported (all prefixed `raftreg_`):
- `grpc_requests_total{method,code}` and `grpc_request_duration_seconds{method}` (histogram):
  every client RPC, by full method name and final status code, counted by a server interceptor
  when the call ends (a stream counts once, when it ends).
- Read at scrape time from the node: `raft_term`, `raft_is_leader`, `raft_has_quorum`,
  `raft_commit_index`, `raft_applied_index`, `raft_log_entries`, `raft_leader_changes_total`,
  `raft_wal_fdatasyncs_total` (group commits of the raft log), `raft_fsyncs_total`,
  `proposals_pending`, `proposals_failed_total{reason}`, `store_revision`,
  `store_compact_revision`, `store_keys`, `leases`, `watchers`,
  `snapshot_duration_seconds` (summary: count and sum of snapshot saves and restores, by `op`).
The registry is per node (no process-wide default registry), so several nodes in one process —
as in tests — never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
import grpc.aio
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from raftreg.resilience import wrap_handler
from raftreg.server.node import RegistryNode

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeCollector(Collector):
    """Gauges and counters read from the node at scrape time."""

    def __init__(self, node: RegistryNode) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        n = self._node
        st = n.raft_status()
        keys, compact_rev, _, leases = n.store_stats()
        c = n.counters

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"raftreg_{name}", doc, value=value)

        yield gauge("raft_term", "Current raft term.", st.term)
        yield gauge("raft_is_leader", "1 if this node is the leader.", int(st.is_leader))
        yield gauge("raft_has_quorum", "1 if this node sees a quorum.", int(st.has_quorum))
        yield gauge("raft_commit_index", "Raft commit index.", st.commit_index)
        yield gauge("raft_applied_index", "Last raft index applied to the store.",
                    st.applied_index)
        yield gauge("raft_log_entries", "Entries in the raft log (since the last snapshot).",
                    st.log_len)
        yield CounterMetricFamily("raftreg_raft_leader_changes", "Leader changes seen.",
                                  value=c.leader_changes)
        yield CounterMetricFamily("raftreg_raft_wal_fdatasyncs",
                                  "fdatasync calls on the raft WAL (one per group commit).",
                                  value=st.fdatasyncs)
        yield CounterMetricFamily("raftreg_raft_fsyncs",
                                  "Other fsyncs: raft term/vote state, directory, compaction.",
                                  value=st.fsyncs)
        yield gauge("proposals_pending", "Proposals queued or in flight.",
                    n.raft.pending_proposals)
        failed = CounterMetricFamily("raftreg_proposals_failed", "Proposals that failed.",
                                     labels=["reason"])
        for reason, count in sorted(c.proposals_failed.items()):
            failed.add_metric([reason], count)
        yield failed
        yield gauge("store_revision", "Current store revision.", n.revision)
        yield gauge("store_compact_revision", "Oldest revision kept.", compact_rev)
        yield gauge("store_keys", "Live keys.", keys)
        yield gauge("leases", "Live leases.", leases)
        yield gauge("watchers", "Active watchers on this node.", n.watcher_count())
        snap = SummaryMetricFamily("raftreg_snapshot_duration_seconds",
                                   "Time to save or restore a store snapshot.", labels=["op"])
        for op, (count, total) in sorted(c.snapshot_seconds.items()):
            snap.add_metric([op], count_value=count, sum_value=total)
        yield snap


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC by method and final code, and times it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("raftreg_grpc_requests", "Client RPCs by method and status.",
                                ["method", "code"], registry=registry)
        self.duration = Histogram("raftreg_grpc_request_duration_seconds",
                                  "Client RPC duration.", ["method"], buckets=_BUCKETS,
                                  registry=registry)
        # labelled children, looked up once per method (and code), not on every call
        self._counts: dict[tuple[str, str], Counter] = {}
        self._timers: dict[str, Histogram] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self.duration.labels(method)

        def start(context: Any) -> float:
            return time.perf_counter()

        def finish(t0: float, context: Any, code: grpc.StatusCode) -> None:
            timer.observe(time.perf_counter() - t0)
            key = (method, code.name)
            count = self._counts.get(key)
            if count is None:
                count = self._counts[key] = self.requests.labels(*key)
            count.inc()

        return wrap_handler(handler, start=start, finish=finish)


def metrics_registry(node: RegistryNode) -> tuple[CollectorRegistry, RpcMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry, RpcMetrics(registry)


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """`GET /metrics` on `app`, in the Prometheus text format."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
