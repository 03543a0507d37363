"""A node's Prometheus metrics: served as text on `GET /metrics` at the node's HTTP address.

etcd's names where the meaning is the same, so etcd's dashboards and alerts work unchanged;
`raftreg_` names only for what etcd lacks.
- Every client RPC, counted by a server interceptor when the call ends (a stream once, when it
  ends), as go-grpc-prometheus names them for etcd: `grpc_server_handled_total{grpc_type,
  grpc_service,grpc_method,grpc_code}` and `grpc_server_handling_seconds{grpc_type,
  grpc_service,grpc_method}` (histogram). raftreg.v1 and etcdserverpb calls are told apart by
  `grpc_service`.
- etcd's, read from the node at scrape time: `etcd_server_has_leader`, `etcd_server_is_leader`,
  `etcd_server_leader_changes_seen_total`, `etcd_server_proposals_committed_total` (the commit
  index), `etcd_server_proposals_applied_total` (the applied index),
  `etcd_server_proposals_pending`, `etcd_server_proposals_failed_total{reason}` (etcd has no
  label), `etcd_debugging_mvcc_current_revision`, `etcd_debugging_mvcc_compact_revision`,
  `etcd_debugging_mvcc_keys_total`, `etcd_debugging_mvcc_watcher_total`.
- raftreg's own: `raftreg_raft_term`, `raftreg_raft_has_quorum`, `raftreg_raft_log_entries`,
  `raftreg_raft_wal_fdatasyncs_total` (group commits of the raft log), `raftreg_raft_fsyncs_total`,
  `raftreg_leases`, `raftreg_snapshot_duration_seconds` (summary of snapshot saves and
  restores, by `op`).
- The process and platform collectors (`process_*`, `python_info`), as every Prometheus client.
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
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from raftreg.common.handlers import wrap_handler
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
        keys, compact_rev, leases = n.store_counts()
        c = n.counters

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("etcd_server_has_leader", "1 if a leader exists (as this node sees it).",
                    int(st.leader is not None))
        yield gauge("etcd_server_is_leader", "1 if this node is the leader.", int(st.is_leader))
        yield counter("etcd_server_leader_changes_seen", "Leader changes seen.",
                      c.leader_changes)
        yield counter("etcd_server_proposals_committed", "Raft entries committed (the commit "
                      "index).", st.commit_index)
        yield counter("etcd_server_proposals_applied", "Raft entries applied to the store.",
                      st.applied_index)
        yield gauge("etcd_server_proposals_pending", "Proposals queued or in flight.",
                    n.raft.pending_proposals)
        failed = CounterMetricFamily("etcd_server_proposals_failed", "Proposals that failed.",
                                     labels=["reason"])
        for reason, count in sorted(c.proposals_failed.items()):
            failed.add_metric([reason], count)
        yield failed
        yield gauge("etcd_debugging_mvcc_current_revision", "Current store revision.",
                    n.revision)
        yield gauge("etcd_debugging_mvcc_compact_revision", "Oldest revision kept.",
                    compact_rev)
        yield gauge("etcd_debugging_mvcc_keys_total", "Live keys.", keys)
        yield gauge("etcd_debugging_mvcc_watcher_total", "Active watchers on this node.",
                    n.watcher_count())
        yield gauge("raftreg_raft_term", "Current raft term.", st.term)
        yield gauge("raftreg_raft_has_quorum", "1 if this node sees a quorum.",
                    int(st.has_quorum))
        yield gauge("raftreg_raft_log_entries",
                    "Entries in the raft log (since the last snapshot).", st.log_len)
        yield counter("raftreg_raft_wal_fdatasyncs",
                      "fdatasync calls on the raft WAL (one per group commit).", st.fdatasyncs)
        yield counter("raftreg_raft_fsyncs",
                      "Other fsyncs: raft term/vote state, directory, compaction.", st.fsyncs)
        yield gauge("raftreg_leases", "Live leases.", leases)
        snap = SummaryMetricFamily("raftreg_snapshot_duration_seconds",
                                   "Time to save or restore a store snapshot.", labels=["op"])
        for op, (count, total) in sorted(c.snapshot_seconds.items()):
            snap.add_metric([op], count_value=count, sum_value=total)
        yield snap


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC by service, method, type and final code, and times it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter("grpc_server_handled", "RPCs completed on the server.",
                               ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                               registry=registry)
        self.duration = Histogram("grpc_server_handling_seconds",
                                  "Time from the start of an RPC to its end on the server.",
                                  ["grpc_type", "grpc_service", "grpc_method"],
                                  buckets=_BUCKETS, registry=registry)
        # labelled children, looked up once per method (and code), not on every call
        self._counts: dict[tuple[str, str], Counter] = {}
        self._timers: dict[str, Histogram] = {}
        # method -> (the handler it resolved to, its wrapped handler): wrapped once, not per
        # call, while the services below resolve a method to the same handler object
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        labels = _labels(method, handler)
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self.duration.labels(*labels)

        def start(context: Any) -> float:
            return time.perf_counter()

        def finish(t0: float, context: Any, code: grpc.StatusCode) -> None:
            timer.observe(time.perf_counter() - t0)
            key = (method, code.name)
            count = self._counts.get(key)
            if count is None:
                count = self._counts[key] = self.handled.labels(*labels, code.name)
            count.inc()

        wrapped = wrap_handler(handler, start=start, finish=finish)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _labels(method: str, handler: Handler) -> tuple[str, str, str]:
    """(grpc_type, grpc_service, grpc_method) of "/package.Service/Method", as
    go-grpc-prometheus labels them."""
    service, _, name = method.lstrip("/").rpartition("/")
    kind = {(False, False): "unary", (True, False): "client_stream",
            (False, True): "server_stream", (True, True): "bidi_stream"}[
        (bool(handler.request_streaming), bool(handler.response_streaming))]
    return kind, service, name


def metrics_registry(node: RegistryNode) -> tuple[CollectorRegistry, RpcMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry, RpcMetrics(registry)


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """`GET /metrics` on `app`, in the Prometheus text format."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
