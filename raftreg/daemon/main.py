"""The node process: one `RegistryNode` served over grpc.aio, plus grpc.health.v1.

`serve_node(cfg, name)` blocks until SIGTERM/SIGINT and returns the process exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raftreg import __version__
from raftreg.api.auth import NodeSecurity
from raftreg.api.etcd import etcd_handlers
from raftreg.api.forward import LeaderLink
from raftreg.api.http_gateway import add_gateway_routes
from raftreg.api.servicers import (
    AuthServicer,
    ClusterServicer,
    KVServicer,
    LeaseServicer,
    MaintenanceServicer,
    WatchServicer,
)
from raftreg.client.protocol import RegistryClient
from raftreg.client.raftreg_client import GrpcRegistryClient
from raftreg.config import ClusterConfig, split_hostport
from raftreg.consensus import (
    Consensus,
    ConsensusFactory,
    FaultInjection,
    RaftNode,
    RaftSettings,
    StateMachine,
)
from raftreg.daemon.metrics import add_metrics_route, metrics_registry
from raftreg.dashboard import add_dashboard_routes
from raftreg.errors import RegistryError
from raftreg.logfmt import LEVELS, setup_logging
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode

log = logging.getLogger("raftreg.daemon")

HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def run_node(
    cfg: ClusterConfig,
    name: str,
    stop: asyncio.Event,
    *,
    join: bool = False,
    faults: FaultInjection | None = None,
) -> None:
    """Serve until `stop` is set (or this member is removed from the cluster). Binds exactly
    the configured client (and HTTP) address. `join`: this node was just added to a running
    cluster with `member add` (see `RaftSettings.join`). `faults`: see `raft_consensus`."""
    loop = asyncio.get_running_loop()
    security = NodeSecurity.load(cfg)  # before anything starts: a bad file stops the node here
    consensus = raft_consensus(cfg, name, loop, join=join, faults=faults)
    node = RegistryNode(cfg, name, loop=loop, consensus=consensus)
    registry, rpc_metrics = metrics_registry(node)
    auth = security.interceptor(lease_keys=node.lease_keys, header=_header(node),
                                barrier=node.barrier)
    server = grpc.aio.server(
        interceptors=[rpc_metrics] + ([auth] if auth is not None else []),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.enable_channelz", 0),  # per-call bookkeeping nothing here reads
            ("grpc.max_receive_message_length", cfg.settings.max_value_bytes + (1 << 20)),
        ],
    )
    link = LeaderLink(node.leader_client_addr, cfg.settings.propose_timeout_s,
                      channel=security.leader_channel)
    verify = None if security.policy is None else security.policy.verify
    pbg.add_KVServicer_to_server(KVServicer(node), server)
    pbg.add_LeaseServicer_to_server(LeaseServicer(node, link), server)
    pbg.add_WatchServicer_to_server(WatchServicer(node), server)
    pbg.add_ClusterServicer_to_server(ClusterServicer(node, link), server)
    pbg.add_MaintenanceServicer_to_server(MaintenanceServicer(node), server)
    pbg.add_AuthServicer_to_server(AuthServicer(node, verify), server)
    server.add_generic_rpc_handlers(etcd_handlers({
        "KV": KVServicer(node, etcd=True),
        "Lease": LeaseServicer(node, link, etcd=True),
        "Watch": WatchServicer(node, etcd=True),
        "Cluster": ClusterServicer(node, link, etcd=True),
        "Maintenance": MaintenanceServicer(node, etcd=True),
        "Auth": AuthServicer(node, verify, etcd=True),
    }, lambda: node.raft.leader is not None,
        grace_s=3 * cfg.settings.election_timeout_max))
    healthy = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    # grpcurl and friends list and call raftreg.v1 without the .proto files (etcd's names are
    # served by generic handlers, so they are not listed; their protos are etcd's)
    reflection.enable_server_reflection(
        [*(s.full_name for s in pb.DESCRIPTOR.services_by_name.values()),
         health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server)
    creds = security.server_credentials
    port = (server.add_insecure_port(node.me.client) if creds is None
            else server.add_secure_port(node.me.client, creds))
    if port == 0:
        node.close()
        raise RegistryError(f"cannot bind the client address {node.me.client}")
    http_runner = None
    close_gateway = close_dashboard = None
    if node.me.http:
        app = web.Application()
        add_metrics_route(app, registry)
        add_health_routes(app, node)
        if security.gateway_allowed:
            close_gateway = add_gateway_routes(app, node.me.client,
                                               channel=security.gateway_channel)
            close_dashboard = add_dashboard_routes(app, _dashboard_client(cfg, node.me.client))
        else:
            log.warning("mutual TLS without auth: the HTTP gateway (no TLS) is not served")
        try:
            http_runner = await serve_http(app, node.me.http)
        except OSError as e:
            node.close()
            raise RegistryError(f"cannot bind the HTTP address {node.me.http}: {e}") from e
    await server.start()
    log.info("node %s serving clients on %s, raft on %s%s", name, node.me.client, node.me.raft,
             f", HTTP on {node.me.http}" if node.me.http else "")
    log.info("client API security: TLS %s, auth %s",
             ("on (mutual)" if security.mutual_tls else "on")
             if security.server_credentials is not None else "off",
             "on" if auth is not None else "off")
    if auth is not None and security.server_credentials is None:
        log.warning("auth is on without TLS: bearer tokens cross the network in clear text")
    tasks = [
        asyncio.create_task(node.housekeeping()),
        asyncio.create_task(_report_health(node, healthy)),
        asyncio.create_task(node.lessor.run()),
        asyncio.create_task(node.progress_notifications()),
        asyncio.create_task(_stop_when_removed(node, stop)),
    ]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await server.stop(grace=1.0)
        if close_gateway is not None:
            await close_gateway()
        if close_dashboard is not None:
            await close_dashboard()
        if http_runner is not None:
            await http_runner.cleanup()
        await link.close()
        node.close()
        log.info("node %s stopped", name)


def raft_settings(cfg: ClusterConfig, name: str, *, join: bool = False) -> RaftSettings:
    """The raft settings of member `name` from the cluster configuration."""
    s, me = cfg.settings, cfg.node(name)
    return RaftSettings(
        self_addr=me.raft,
        peers=tuple(n.raft for n in cfg.nodes if n.name != name),
        secret=cfg.cluster_secret(),
        data_dir=cfg.data_dir(me),
        heartbeat_interval=s.heartbeat_interval,
        election_timeout_min=s.election_timeout_min,
        election_timeout_max=s.election_timeout_max,
        leader_fallback_timeout=s.leader_fallback_timeout,
        max_inflight=s.max_inflight_batches,
        batch_max=s.batch_max,
        snapshot_entries=s.snapshot_entries,
        snapshot_interval_s=s.snapshot_interval_s,
        join=join,
    )


def raft_consensus(
    cfg: ClusterConfig,
    name: str,
    loop: asyncio.AbstractEventLoop,
    *,
    join: bool = False,
    faults: FaultInjection | None = None,
) -> ConsensusFactory:
    """The consensus of member `name`: a `RaftNode` over PySyncObj. `faults` (TEST ONLY) comes
    from the test launcher (raftreg/testing/node.py) and never from the configuration."""
    settings = raft_settings(cfg, name, join=join)

    def build(sm: StateMachine) -> Consensus:
        return RaftNode(settings, sm.apply_one, sm.freeze, sm.restore, loop=loop,
                        faults=faults)

    return build


def _dashboard_client(cfg: ClusterConfig, target: str) -> Callable[[str], RegistryClient]:
    """connect(token): a client of this node's own client API for the dashboard, as the
    gateway's calls are (TLS when on, verified with tls_ca_file; the node's own certificate
    under mutual TLS), carrying the page's token so that the API's auth rules decide."""
    s = cfg.settings
    ca = str(cfg.file(s.tls_ca_file)) if s.tls_ca_file else ""
    mutual = bool(s.tls_client_ca_file)
    cert = str(cfg.file(s.tls_cert_file)) if mutual else ""
    key = str(cfg.file(s.tls_key_file)) if mutual else ""

    def connect(token: str) -> RegistryClient:
        return GrpcRegistryClient([target], tls=s.tls, ca_file=ca, cert_file=cert, key_file=key,
                                  token=token, rediscover_interval=3600.0)

    return connect


async def _stop_when_removed(node: RegistryNode, stop: asyncio.Event) -> None:
    """A member removed from the cluster stops serving (as etcd's does). A removal record is
    acted on once this node has applied what it knows to be committed and the latest record
    for it still says removed: a member removed and added again replays its old removal."""
    loop = asyncio.get_running_loop()
    while True:
        await node.removed.wait()
        settle = loop.time() + 2.0
        while loop.time() < settle:
            st = node.raft_status()
            if st.applied_index >= st.commit_index:
                break
            await asyncio.sleep(0.05)
        if node.removed_for_good():
            log.warning("this member (%s) was removed from the cluster; stopping", node.me.name)
            stop.set()
            return
        node.removed.clear()


def _header(node: RegistryNode) -> Callable[[], pb.ResponseHeader]:
    def header() -> pb.ResponseHeader:
        return pb.ResponseHeader(cluster_id=node.cluster_id, member_id=node.member_id,
                                 revision=node.revision, raft_term=node.raft.term)

    return header


async def _report_health(node: RegistryNode, healthy: Any) -> None:
    """Health follows leader + quorum; leader changes are counted for metrics."""
    last = None
    leader: str | None = None
    while True:
        st = node.raft_status()
        if st.leader is not None and st.leader != leader:
            if leader is not None:
                node.counters.leader_changes += 1
            leader = st.leader
        status = _SERVING if st.leader is not None and st.has_quorum else _NOT_SERVING
        if status != last:
            for service in ("", "raftreg.v1.KV"):
                await healthy.set(service, status)
            last = status
        await asyncio.sleep(0.2)


def add_health_routes(app: web.Application, node: RegistryNode) -> None:
    """etcd's `GET /health` ({"health": "true"|"false", "reason": ...}; 503 when unhealthy:
    no leader, or no quorum from here) and `GET /version`."""

    async def health(request: web.Request) -> web.Response:
        st = node.raft_status()
        reason = "RAFT NO LEADER" if st.leader is None else "" if st.has_quorum else "NO QUORUM"
        return web.json_response({"health": "false" if reason else "true", "reason": reason},
                                 status=503 if reason else 200)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"raftreg": __version__,
                                  "apis": ["raftreg.v1", "etcdserverpb (etcd 3.5)"]})

    app.router.add_get("/health", health)
    app.router.add_get("/version", version)


async def serve_http(app: web.Application, address: str) -> web.AppRunner:
    """Serve `app` on exactly `address` (host:port); the caller cleans the runner up."""
    host, port = split_hostport(address)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=False).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def serve_node(
    cfg: ClusterConfig, name: str, *, join: bool = False, faults: FaultInjection | None = None
) -> int:
    setup_logging(f"node={name}", cfg.settings.log_format, LEVELS[cfg.settings.log_level])
    if cfg.settings.use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    # The raft tick thread, grpc's threads and the event loop share one GIL: a short switch
    # interval keeps a ready thread from waiting the default 5 ms for its turn.
    sys.setswitchinterval(0.0002)
    # Long-lived process with large, stable heaps: keep the collector off the hot path.
    # Young collections are rare (every 50,000 net allocations), and the middle generation
    # is collected every 4 of them, so it never holds more than ~200,000 objects. With 50 it
    # gathered millions of new keys' objects during a bulk load: loading 1,500,000 keys into
    # a Store, one collection of it took 214 ms (at most 20 ms with 4). Store views keep
    # their copy out of collections (raftreg.server.heap).
    gc.freeze()
    gc.set_threshold(50_000, 4, 100)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_node(cfg, name, stop, join=join, faults=faults)

    try:
        asyncio.run(main())
    except RegistryError as e:
        log.error("%s", e)
        return 1
    return 0
