"""`EtcdRegistryClient`: the `RegistryClient` protocol over a real etcd v3 cluster (grpc.aio).

It speaks etcd's v3 gRPC protocol with raftreg's own messages (`protos/etcdv3.proto`, package
`raftreg.etcdv3`) on etcd's method paths ("/etcdserverpb.KV/Range", ...). No etcd type leaves
this package: results are raftreg's domain types, errors are `raftreg.errors` exceptions made
by `raftreg.client.etcd.errors.etcd_error` (the one mapping), watches are
`raftreg.client.resumable_watch.Watch` and the keepalive manager is raftreg's `LeaseKeeper`.

Contracts:
- One channel per endpoint, created lazily on the loop of the first call; the client is bound
  to that loop. Channels, endpoint ranking, failure marks, connection waits, backoff, watches,
  the keepalive stream and the lifecycle are shared with the raftreg client
  (`raftreg.client.pooled_client.PooledClient`).
  Calls go to the first healthy endpoint in the configured order (etcd members forward writes
  and linearizable reads to the leader themselves).
- Every attempt has a deadline of `timeout` seconds (cut to what is left of the call's
  `retry_budget`, default 2 x timeout).
- Idempotent calls (reads, lease TTL/list/keepalive, member list, status) are retried on the
  next endpoint after UNAVAILABLE / DEADLINE_EXCEEDED (leader change, member down, "etcdserver:
  request timed out") with exponential backoff and jitter until the budget is spent.
- Writes (put, delete, txn, compact, lease grant/revoke) are retried only when nothing can have
  been applied: no connection was ready (nothing sent), or etcd refused the request before
  proposing it ("etcdserver: no leader", "not capable", "too many requests"). etcd has no
  request identities, so any other UNAVAILABLE / DEADLINE_EXCEEDED of a write raises
  `OutcomeUnknown` at once: retrying could apply it twice.
- Watch and keepalive streams carry etcd's "hasleader" metadata, so a member that loses its
  leader ends them ("etcdserver: no leader") and they move to another member. Watches share
  one stream (`raftreg.client.watch_mux`, with etcd's wire from `raftreg.client.etcd.watch_wire`).
- TLS (`raftreg.client.security.ClientSecurity`): on when asked for, when a CA / client
  certificate is given or an endpoint is written https://. etcd's own authentication (user +
  password for a token) is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.client.bidi import KeepAliveCall
from raftreg.client.endpoint_pool import NotConnected
from raftreg.client.endpoints import normalize_endpoint, normalize_endpoints
from raftreg.client.etcd.errors import rpc_error
from raftreg.client.etcd.pb import etcdv3_pb2 as pb
from raftreg.client.etcd.watch_wire import REQUIRE_LEADER, WATCH_PATH
from raftreg.client.etcd.watch_wire import WIRE as WATCH_WIRE
from raftreg.client.pooled_client import PooledClient
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    list_then_watch,
    resolve_range,
    to_bytes,
)
from raftreg.client.resumable_watch import Watch
from raftreg.client.security import ClientSecurity, wants_tls
from raftreg.common import convert
from raftreg.common.clock import Clock
from raftreg.common.convert import RequestWriter
from raftreg.common.types import (
    DeleteRange,
    DeleteResult,
    LeaseGrantResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
)

T = TypeVar("T")

# Requests as etcd's messages; responses and events are read by `raftreg.common.convert`'s
# readers, which take etcd's messages as they are (raftreg.v1 mirrors them).
ETCD = RequestWriter(pb)

# etcd's gRPC method paths (etcdserverpb/rpc.proto services).
RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
DELETE_RANGE = "/etcdserverpb.KV/DeleteRange"
TXN = "/etcdserverpb.KV/Txn"
COMPACT = "/etcdserverpb.KV/Compact"
LEASE_GRANT = "/etcdserverpb.Lease/LeaseGrant"
LEASE_REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
LEASE_TTL = "/etcdserverpb.Lease/LeaseTimeToLive"
LEASE_LEASES = "/etcdserverpb.Lease/LeaseLeases"
MEMBER_LIST = "/etcdserverpb.Cluster/MemberList"
STATUS = "/etcdserverpb.Maintenance/Status"

ETCD_SCHEMES = ("etcd",)  # TLS: an https:// endpoint or a CA file (there is no "etcds")


def split_etcd_endpoints(endpoints: Sequence[str] | str) -> tuple[str, ...]:
    """"host:port" endpoints from any mix of "etcd://a:1,b:2", "http://a:1", "a:1" (and
    comma-separated strings of them). Raises `InvalidArgument` for anything else."""
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in items:
        text = item.strip()
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in ETCD_SCHEMES:
            text = rest
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            s, sep2, r = part.partition("://")
            if sep2 and s.lower() in ETCD_SCHEMES:
                part = r
            out.append(normalize_endpoint(part))
    return normalize_endpoints(out)


def _unary(ch: grpc.aio.Channel, path: str, req: type[Message], resp: type[Message]) -> Any:
    return ch.unary_unary(
        path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString
    )


def _bidi(ch: grpc.aio.Channel, path: str, req: type[Message], resp: type[Message]) -> Any:
    return ch.stream_stream(
        path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString
    )


class EtcdConn:
    """One endpoint's channel and etcd's methods on it (request message -> response message).
    Also used raw by the benchmark, which measures etcd and raftreg through the same calls."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.range = _unary(channel, RANGE, pb.RangeRequest, pb.RangeResponse)
        self.put = _unary(channel, PUT, pb.PutRequest, pb.PutResponse)
        self.delete_range = _unary(channel, DELETE_RANGE, pb.DeleteRangeRequest,
                                   pb.DeleteRangeResponse)
        self.txn = _unary(channel, TXN, pb.TxnRequest, pb.TxnResponse)
        self.compact = _unary(channel, COMPACT, pb.CompactionRequest, pb.CompactionResponse)
        self.lease_grant = _unary(channel, LEASE_GRANT, pb.LeaseGrantRequest,
                                  pb.LeaseGrantResponse)
        self.lease_revoke = _unary(channel, LEASE_REVOKE, pb.LeaseRevokeRequest,
                                   pb.LeaseRevokeResponse)
        self.lease_ttl = _unary(channel, LEASE_TTL, pb.LeaseTimeToLiveRequest,
                                pb.LeaseTimeToLiveResponse)
        self.lease_leases = _unary(channel, LEASE_LEASES, pb.LeaseLeasesRequest,
                                   pb.LeaseLeasesResponse)
        self.lease_keepalive = _bidi(channel, LEASE_KEEPALIVE, pb.LeaseKeepAliveRequest,
                                     pb.LeaseKeepAliveResponse)
        self.member_list = _unary(channel, MEMBER_LIST, pb.MemberListRequest,
                                  pb.MemberListResponse)
        self.status = _unary(channel, STATUS, pb.StatusRequest, pb.StatusResponse)
        self.watch = _bidi(channel, WATCH_PATH, pb.WatchRequest, pb.WatchResponse)


def _member(m: pb.Member, leader: int) -> Member:
    return Member(
        id=m.ID,
        name=m.name,
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        is_learner=m.isLearner,
        is_leader=leader != 0 and leader == m.ID,
        # etcd reports no reachability: a member that has started publishes its client URLs.
        connected=bool(m.clientURLs),
    )


class EtcdRegistryClient(PooledClient[EtcdConn]):
    """A `RegistryClient` over etcd v3; see the module docstring for the contract.

    `endpoints`: "host:port", "http://host:port" or "etcd://a:1,b:2" (any mix). `timeout`
    bounds each attempt, `retry_budget` (default 2 x timeout) a whole call with retries,
    `connect_timeout` the wait for a connection to one endpoint. `tls`, `ca_file`,
    `cert_file`, `key_file`: TLS, see the module docstring. `clock` measures budgets and
    retry pauses (default: the loop's; see `PooledClient`).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retry_budget: float | None = None,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        failure_penalty: float = 5.0,
        channel_options: Sequence[tuple[str, str | int]] = (),
        tls: bool = False,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        clock: Clock | None = None,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise E.InvalidArgument("timeouts must be positive")
        security = ClientSecurity(
            tls=tls or wants_tls(endpoints), ca_file=ca_file, cert_file=cert_file,
            key_file=key_file,
        )
        super().__init__(
            split_etcd_endpoints(endpoints),
            make_conn=EtcdConn,
            watch_wire=WATCH_WIRE,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retry_budget=retry_budget,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            failure_penalty=failure_penalty,
            channel_options=channel_options,
            security=security,
            clock=clock,
        )
        self._names: dict[int, str] = {}

    @property
    def connect_timeout(self) -> float:
        """The bound on waiting for a connection to one endpoint."""
        return self._connect_timeout

    # --- KV --------------------------------------------------------------------------------

    async def get(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
    ) -> RangeResult:
        k, end = resolve_range(key, range_end, prefix)
        req = ETCD.range(
            Range(k, end, revision, limit, sort_order, sort_target, keys_only, count_only),
            serializable=serializable,
        )

        async def call(c: EtcdConn, t: float) -> RangeResult:
            return convert.range_result_from_pb(await c.range(req, timeout=t))

        return await self._call(call, "get")

    async def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        req = ETCD.put(Put(to_bytes(key), to_bytes(value), lease, prev_kv))

        async def call(c: EtcdConn, t: float) -> PutResult:
            return convert.put_result_from_pb(await c.put(req, timeout=t))

        return await self._call(call, "put", write=True)

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        k, end = resolve_range(key, range_end, prefix)
        req = ETCD.delete(DeleteRange(k, end, prev_kv))

        async def call(c: EtcdConn, t: float) -> DeleteResult:
            return convert.delete_result_from_pb(await c.delete_range(req, timeout=t))

        return await self._call(call, "delete", write=True)

    async def txn(self, txn: Txn) -> TxnResult:
        req = ETCD.txn(txn)
        # A txn of reads only changes nothing and may be retried like a read.
        read_only = _read_only(txn)

        async def call(c: EtcdConn, t: float) -> TxnResult:
            return convert.txn_result_from_pb(await c.txn(req, timeout=t))

        return await self._call(call, "txn", write=not read_only)

    async def compact(self, revision: int) -> int:
        req = pb.CompactionRequest(revision=revision)

        async def call(c: EtcdConn, t: float) -> int:
            resp: pb.CompactionResponse = await c.compact(req, timeout=t)
            return resp.header.revision

        return await self._call(call, "compact", write=True)

    # --- leases ----------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=id)

        async def call(c: EtcdConn, t: float) -> LeaseGrantResult:
            resp: pb.LeaseGrantResponse = await c.lease_grant(req, timeout=t)
            if resp.error:
                raise E.RegistryError(resp.error)
            return LeaseGrantResult(resp.header.revision, resp.ID, resp.TTL)

        return await self._call(call, "lease grant", write=True)

    async def lease_revoke(self, id: int) -> None:
        req = pb.LeaseRevokeRequest(ID=id)

        async def call(c: EtcdConn, t: float) -> None:
            await c.lease_revoke(req, timeout=t)

        await self._call(call, "lease revoke", write=True)

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL:
        req = pb.LeaseTimeToLiveRequest(ID=id, keys=keys)

        async def call(c: EtcdConn, t: float) -> LeaseTTL:
            r: pb.LeaseTimeToLiveResponse = await c.lease_ttl(req, timeout=t)
            return LeaseTTL(r.ID or id, r.TTL, r.grantedTTL, tuple(r.keys))

        return await self._call(call, "lease timetolive")

    async def lease_list(self) -> list[int]:
        async def call(c: EtcdConn, t: float) -> list[int]:
            r: pb.LeaseLeasesResponse = await c.lease_leases(pb.LeaseLeasesRequest(), timeout=t)
            return [s.ID for s in r.leases]

        return await self._call(call, "lease list")

    async def lease_keepalive_once(self, id: int) -> int:
        async def call(c: EtcdConn, t: float) -> int:
            stream = c.lease_keepalive(None, timeout=t, metadata=REQUIRE_LEADER)
            try:
                # a call the server already ended: read() below raises its status
                with contextlib.suppress(asyncio.InvalidStateError):
                    await stream.write(pb.LeaseKeepAliveRequest(ID=id))
                resp = await stream.read()
                if not isinstance(resp, pb.LeaseKeepAliveResponse):
                    raise E.Unavailable("keepalive stream ended without an answer")
                return resp.TTL
            finally:
                stream.cancel()

        return await self._call(call, "lease keepalive")

    async def open_keepalive_stream(self) -> KeepAliveCall:
        """A LeaseKeepAlive stream for `LeaseKeeper`, to the first healthy endpoint. Raises
        `Unavailable` if it cannot connect; a broken stream marks its endpoint failed, so the
        keeper's next stream goes elsewhere."""
        if self._closed:
            raise E.ClientClosed("client is closed")
        ep = self._pool.ordered()[0]
        try:
            await self._pool.connect(ep, self.connect_timeout)
        except NotConnected as f:
            self._pool.mark_failed(ep)
            raise E.NotApplied(str(f)) from None
        call = self._pool.conn(ep).lease_keepalive(None, metadata=REQUIRE_LEADER)
        return self._keepalive_call(
            ep, call, pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse, rpc_error,
            batches=False,
        )

    # --- watches ---------------------------------------------------------------------------

    async def list_then_watch(
        self, prefix: KeyLike, *, prev_kv: bool = False, progress_notify: bool = False
    ) -> tuple[RangeResult, Watch]:
        return await list_then_watch(self, prefix, prev_kv=prev_kv,
                                     progress_notify=progress_notify)

    # --- cluster ---------------------------------------------------------------------------

    async def member_list(self) -> list[Member]:
        """etcd's member list; `is_leader` from the answering member's Status, `connected`
        means "started" (etcd reports no reachability)."""

        async def call(c: EtcdConn, t: float) -> list[Member]:
            r: pb.MemberListResponse = await c.member_list(pb.MemberListRequest(), timeout=t)
            st: pb.StatusResponse = await c.status(pb.StatusRequest(), timeout=t)
            for m in r.members:
                if m.name:
                    self._names[m.ID] = m.name
            return [_member(m, st.leader) for m in r.members]

        return await self._call(call, "member list")

    async def status(self, endpoint: str | None = None, *, with_hash: bool = False) -> NodeStatus:
        """etcd's Status of `endpoint` (or of any reachable one). etcd does not report keys,
        leases, watchers, compact revision or hash: those fields are 0."""

        async def call(c: EtcdConn, t: float) -> NodeStatus:
            r: pb.StatusResponse = await c.status(pb.StatusRequest(), timeout=t)
            mid = r.header.member_id
            if mid not in self._names:
                ml: pb.MemberListResponse = await c.member_list(pb.MemberListRequest(), timeout=t)
                self._names.update((m.ID, m.name) for m in ml.members if m.name)
            return NodeStatus(
                endpoint=c.endpoint,
                member_id=mid,
                leader=r.leader,
                is_leader=r.leader != 0 and r.leader == mid,
                name=self._names.get(mid, ""),
                version=r.version,
                revision=r.header.revision,
                raft_term=r.raftTerm or r.header.raft_term,
                raft_index=r.raftIndex,
                applied_index=r.raftAppliedIndex,
                db_size=r.dbSize,
                db_size_in_use=r.dbSizeInUse,
                is_learner=r.isLearner,
                errors=tuple(r.errors),
            )

        if endpoint is None:
            return await self._call(call, "status")
        ep = split_etcd_endpoints(endpoint)[0]
        return await self._call(call, "status", endpoint=ep)

    # --- internals -------------------------------------------------------------------------

    def _rpc_error(self, e: grpc.aio.AioRpcError) -> E.RegistryError:
        return rpc_error(e)


def _read_only(txn: Txn) -> bool:
    ops = (*txn.success, *txn.failure)
    return all(isinstance(o, Range) or (isinstance(o, Txn) and _read_only(o)) for o in ops)
