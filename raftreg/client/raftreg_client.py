"""`GrpcRegistryClient`: the raftreg gRPC client (grpc.aio), leader-aware, with failover.

One file on purpose (over 500 lines): it is one class, the client's public API (a short method
per RPC) over the leader routing they all share; what is not specific to raftreg's wire (the
channel pool, retries, watches) already lives in pooled_client.py and watch_mux.py.

Contracts:
- One channel per endpoint, created lazily on the event loop of the first call; a client is
  bound to that loop. Channels, endpoint ranking, failure marks, connection waits, backoff,
  watches, the keepalive stream and the lifecycle are shared with the etcd client
  (`raftreg.client.pooled_client.PooledClient`); leader routing on top of them is this module's.
- Writes and linearizable reads go to the leader when it is known (followers would forward;
  the leader saves a hop). Serializable reads and cluster queries go to the first healthy
  endpoint in the configured order.
- UNAVAILABLE, DEADLINE_EXCEEDED and connection failures fail over to the next endpoint and are
  retried with exponential backoff and jitter until the overall budget (default 2 x timeout) is
  spent. Any other error is raised at once.
- Every write carries a `RequestId(client_id, seq)`: `client_id` is random per client, `seq`
  increases by one per logical write, and every retry of that write re-sends the same id, so
  the store applies it at most once. A write whose outcome may be unknown (the request may
  have reached a server) and that never got an answer raises `OutcomeUnknown`, never a plain
  failure.
- Write flow control (`raftreg.client.seq_window.SeqWindow`): a write takes its seq only when
  every unfinished write of this client (in flight or being retried) has a seq greater than
  `seq - write_window`; otherwise it waits, first come first served, for the oldest to finish
  (however it ends). The server remembers the last `client_window` seqs of a client, so with
  `write_window <= client_window` (both default to `raftreg.config.DEFAULT_CLIENT_WINDOW`) a
  retry is never refused as "request id too old", however many writes share the client. The
  wait is back-pressure, not part of the write's retry budget (the oldest write ends within
  its own budget).
- Every `grpc.aio.AioRpcError` becomes a `raftreg.errors` exception through `rpc_error`.
- Watches share one stream (`raftreg.client.watch_mux`, with raftreg's wire from
  `raftreg.client.raftreg_watch_wire`); a failed watch or keepalive stream forgets the leader too.
- Security (`raftreg.client.security.ClientSecurity`): TLS when asked for, when a CA /
  certificate file is given or an endpoint is written https://; `token` is sent as
  `authorization: Bearer <token>` on every call, streams included. The environment is not
  read here (`raftreg.client.connect()` and the CLI do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.client.bidi import KeepAliveCall
from raftreg.client.endpoint_pool import NotConnected
from raftreg.client.endpoints import normalize_endpoint, normalize_endpoints
from raftreg.client.kvmux import KVMux, StreamFailure
from raftreg.client.pooled_client import PooledClient, Route, retryable
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    list_then_watch,
    resolve_range,
    to_bytes,
)
from raftreg.client.raftreg_watch_wire import WIRE as WATCH_WIRE
from raftreg.client.resumable_watch import Watch
from raftreg.client.security import ClientSecurity, wants_tls
from raftreg.client.seq_window import SeqWindow
from raftreg.common import convert
from raftreg.common.clock import Clock
from raftreg.common.status import error_from_status
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
from raftreg.config import DEFAULT_CLIENT_WINDOW
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg

T = TypeVar("T")

_MAX_CLIENT_ID = (1 << 63) - 1


class _IdentifiedRequest(Protocol):
    """A write request: it carries a `RequestId`."""

    @property
    def request_id(self) -> pb.RequestId: ...


def rpc_error(e: grpc.aio.AioRpcError) -> E.RegistryError:
    """The raftreg exception for a failed call (the client's one status -> exception mapping)."""
    return error_from_status(e.code(), e.details() or "", _trailing_metadata(e))


def _trailing_metadata(e: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    # grpc.aio returns an aio.Metadata (iterates as (key, value)); the stubs say otherwise.
    md: Iterable[tuple[str, str | bytes]] | None = cast(Any, e.trailing_metadata())
    return tuple((k, v) for k, v in md) if md else ()


class _Conn:
    """One endpoint's stubs (its channel is the `EndpointPool`'s)."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.kv = pbg.KVStub(channel)
        self.lease = pbg.LeaseStub(channel)
        self.cluster = pbg.ClusterStub(channel)
        self.maintenance = pbg.MaintenanceStub(channel)
        self.watch = pbg.WatchStub(channel)
        self.inflight = 0  # KV operations in flight on this endpoint
        self._mux: KVMux | None = None

    def mux(self) -> KVMux:
        if self._mux is None or self._mux.broken:
            self._mux = KVMux(self.kv)
        return self._mux

    async def close(self) -> None:
        """Close the Batch stream (the pool closes the channel after this)."""
        if self._mux is not None:
            await self._mux.close()


def _member(m: pb.Member) -> Member:
    return Member(
        id=m.ID,
        name=m.name,
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        is_learner=m.isLearner,
        is_leader=m.isLeader,
        connected=m.connected,
    )


def _node_status(endpoint: str, m: pb.StatusResponse) -> NodeStatus:
    return NodeStatus(
        endpoint=endpoint,
        member_id=m.header.member_id,
        leader=m.leader,
        is_leader=m.leader != 0 and m.leader == m.header.member_id,
        name=m.name,
        version=m.version,
        revision=m.header.revision,
        raft_term=m.raftTerm or m.header.raft_term,
        raft_index=m.raftIndex,
        applied_index=m.raftAppliedIndex,
        db_size=m.dbSize,
        db_size_in_use=m.dbSizeInUse,
        keys=m.keys,
        leases=m.leases,
        watchers=m.watchers,
        compact_revision=m.compact_revision,
        hash=m.hash,
        is_learner=m.isLearner,
        errors=tuple(m.errors),
    )


class GrpcRegistryClient(PooledClient[_Conn]):
    """A `RegistryClient` over raftreg's gRPC API.

    `timeout` bounds each attempt; `retry_budget` (default 2 x timeout) bounds a whole call
    including retries; `connect_timeout` bounds waiting for a connection to one endpoint.
    `client_id` (default random, 63 bits, non-zero) identifies this client's writes;
    `write_window` bounds how far apart the seqs of its unfinished writes may be (see the
    module docstring; never more than the cluster's `client_window`).
    `tls`, `ca_file`, `cert_file`, `key_file`, `token`: see the module docstring.
    `clock` measures budgets and retry pauses (default: the loop's; see `PooledClient`).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retry_budget: float | None = None,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        failure_penalty: float = 5.0,
        rediscover_interval: float = 1.0,
        client_id: int | None = None,
        write_window: int = DEFAULT_CLIENT_WINDOW,
        channel_options: Sequence[tuple[str, str | int]] = (),
        tls: bool = False,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        token: str = "",
        clock: Clock | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        security = ClientSecurity(
            tls=tls or wants_tls(endpoints), ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, token=token,
        )
        eps = normalize_endpoints(endpoints)
        if timeout <= 0 or connect_timeout <= 0:
            raise E.InvalidArgument("timeouts must be positive")
        if client_id is not None and not 0 < client_id <= _MAX_CLIENT_ID:
            raise E.InvalidArgument("client_id must be in [1, 2**63 - 1]")
        if write_window < 1:
            raise E.InvalidArgument("write_window must be >= 1")
        super().__init__(
            eps,
            make_conn=_Conn,
            close_conn=_Conn.close,
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
        self._rediscover_interval = rediscover_interval
        self._client_id = client_id or (secrets.randbits(63) or 1)
        self._write_window = SeqWindow(write_window)
        self._leader: str | None = None
        self._leader_checked_at = -math.inf
        self._member_endpoints: dict[int, str] = {}
        self._discovery_lock: asyncio.Lock | None = None

    # --- public properties -----------------------------------------------------------------

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def seq_window(self) -> SeqWindow:
        """The seqs of this client's writes (`write_window`; how many are unfinished, how many
        writes wait for one)."""
        return self._write_window

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
        req = convert.RAFTREG.range(
            Range(k, end, revision, limit, sort_order, sort_target, keys_only, count_only),
            serializable=serializable,
        )

        async def call(c: _Conn, t: float) -> RangeResult:
            resp = await self._kv_op(c, t, c.kv.Range, pb.TaggedRequest(range=req))
            assert isinstance(resp, pb.RangeResponse)
            return convert.range_result_from_pb(resp)

        return await self._call(call, "get", route="any" if serializable else "leader")

    async def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        req = convert.RAFTREG.put(Put(to_bytes(key), to_bytes(value), lease, prev_kv))

        async def call(c: _Conn, t: float) -> PutResult:
            resp = await self._kv_op(c, t, c.kv.Put, pb.TaggedRequest(put=req))
            assert isinstance(resp, pb.PutResponse)
            return convert.put_result_from_pb(resp)

        return await self._write(req, call, "put")

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        k, end = resolve_range(key, range_end, prefix)
        req = convert.RAFTREG.delete(DeleteRange(k, end, prev_kv))

        async def call(c: _Conn, t: float) -> DeleteResult:
            resp = await self._kv_op(c, t, c.kv.DeleteRange, pb.TaggedRequest(delete_range=req))
            assert isinstance(resp, pb.DeleteRangeResponse)
            return convert.delete_result_from_pb(resp)

        return await self._write(req, call, "delete")

    async def txn(self, txn: Txn) -> TxnResult:
        req = convert.RAFTREG.txn(txn)

        async def call(c: _Conn, t: float) -> TxnResult:
            resp = await self._kv_op(c, t, c.kv.Txn, pb.TaggedRequest(txn=req))
            assert isinstance(resp, pb.TxnResponse)
            return convert.txn_result_from_pb(resp)

        return await self._write(req, call, "txn")

    async def compact(self, revision: int) -> int:
        req = pb.CompactionRequest(revision=revision)

        async def call(c: _Conn, t: float) -> int:
            return (await c.kv.Compact(req, timeout=t)).header.revision

        return await self._call(call, "compact", route="leader", write=True)

    # --- leases ----------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=id)

        async def call(c: _Conn, t: float) -> LeaseGrantResult:
            resp = await c.lease.LeaseGrant(req, timeout=t)
            if resp.error:
                raise E.RegistryError(resp.error)
            return LeaseGrantResult(resp.header.revision, resp.ID, resp.TTL)

        return await self._write(req, call, "lease grant")

    async def lease_revoke(self, id: int) -> None:
        req = pb.LeaseRevokeRequest(ID=id)

        async def call(c: _Conn, t: float) -> None:
            await c.lease.LeaseRevoke(req, timeout=t)

        await self._write(req, call, "lease revoke")

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL:
        req = pb.LeaseTimeToLiveRequest(ID=id, keys=keys)

        async def call(c: _Conn, t: float) -> LeaseTTL:
            r = await c.lease.LeaseTimeToLive(req, timeout=t)
            return LeaseTTL(r.ID or id, r.TTL, r.grantedTTL, tuple(r.keys))

        return await self._call(call, "lease timetolive", route="leader")

    async def lease_list(self) -> list[int]:
        async def call(c: _Conn, t: float) -> list[int]:
            r = await c.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=t)
            return [s.ID for s in r.leases]

        return await self._call(call, "lease list", route="leader")

    async def lease_keepalive_once(self, id: int) -> int:
        async def call(c: _Conn, t: float) -> int:
            stream = c.lease.LeaseKeepAlive(None, timeout=t)
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

        return await self._call(call, "lease keepalive", route="leader")

    async def open_keepalive_stream(self) -> KeepAliveCall:
        """A LeaseKeepAlive stream (for `LeaseKeeper`), to the leader when known, else to the
        first healthy endpoint (which forwards). Raises `Unavailable` if it cannot connect;
        the stream marks its endpoint failed when it breaks, so the next one goes elsewhere."""
        if self._closed:
            raise E.ClientClosed("client is closed")
        deadline = self._call_deadline()
        ep = await self._leader_endpoint(deadline) or self._pool.ordered()[0]
        try:
            await self._pool.connect(ep, self._connect_timeout)
        except NotConnected as f:
            self._mark_failed(ep)
            raise E.NotApplied(str(f)) from None
        call = self._pool.conn(ep).lease.LeaseKeepAlive(None)
        return self._keepalive_call(
            ep, call, pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse, rpc_error
        )

    # --- watches -----------------------------------------------------------------------------

    async def list_then_watch(
        self, prefix: KeyLike, *, prev_kv: bool = False, progress_notify: bool = False
    ) -> tuple[RangeResult, Watch]:
        return await list_then_watch(self, prefix, prev_kv=prev_kv,
                                     progress_notify=progress_notify)

    @property
    def watch_streams_opened(self) -> int:
        """How many watch streams this client opened (1 + reconnects)."""
        return 0 if self._watch_mux is None else self._watch_mux.streams_opened

    # --- cluster ---------------------------------------------------------------------------

    async def member_list(self) -> list[Member]:
        async def call(c: _Conn, t: float) -> list[Member]:
            r = await c.cluster.MemberList(pb.MemberListRequest(), timeout=t)
            self._learn_members(r.members)
            return [_member(m) for m in r.members]

        return await self._call(call, "member list", route="any")

    async def member_add(self, name: str, peer_url: str, client_url: str) -> list[Member]:
        """Add a member (raftreg only; start the new node after this returns). Returns the
        members, the new one first. Not retried after it may have been applied: a repeat then
        answers `AlreadyExists`."""

        async def call(c: _Conn, t: float) -> list[Member]:
            r = await c.cluster.MemberAdd(pb.MemberAddRequest(
                name=name, peerURLs=[peer_url], clientURLs=[client_url]), timeout=t)
            self._learn_members(r.members)
            return [_member(r.member)] + [_member(m) for m in r.members if m.ID != r.member.ID]

        return await self._call(call, "member add", route="leader", write=True)

    async def member_remove(self, member_id: int) -> list[Member]:
        """Remove a member (raftreg only; the leader too: it hands over first). Returns the
        remaining members."""

        async def call(c: _Conn, t: float) -> list[Member]:
            r = await c.cluster.MemberRemove(pb.MemberRemoveRequest(ID=member_id), timeout=t)
            return [_member(m) for m in r.members]

        return await self._call(call, "member remove", route="leader", write=True)

    async def status(self, endpoint: str | None = None, *, with_hash: bool = False) -> NodeStatus:
        async def call(c: _Conn, t: float) -> NodeStatus:
            r = await c.maintenance.Status(pb.StatusRequest(with_hash=with_hash), timeout=t)
            if c.endpoint in self._endpoints:
                self._member_endpoints.setdefault(r.header.member_id, c.endpoint)
            return _node_status(c.endpoint, r)

        if endpoint is None:
            return await self._call(call, "status", route="any")
        return await self._call(call, "status", route="any", endpoint=normalize_endpoint(endpoint))

    async def snapshot(
        self, *, timeout: float = 60.0, progress: Callable[[int, int], None] | None = None
    ) -> bytes:
        """A backup of the whole store (raftreg's backup format, `raftreg.store.backup`) taken
        at a linearizable point by any reachable node; `timeout` bounds the whole transfer.
        `progress(received, total)` is called after each chunk (bytes so far, of total)."""

        async def call(c: _Conn, t: float) -> bytes:
            parts: list[bytes] = []
            received = 0
            async for r in c.maintenance.Snapshot(pb.SnapshotRequest(), timeout=timeout):
                parts.append(r.blob)
                received += len(r.blob)
                if progress is not None:
                    progress(received, received + r.remaining_bytes)
                if r.remaining_bytes == 0:
                    return b"".join(parts)
            raise E.Unavailable("the snapshot stream ended early")

        return await self._call(call, "snapshot", route="any")

    # --- internals -------------------------------------------------------------------------

    async def _write(
        self, req: _IdentifiedRequest, fn: Callable[[_Conn, float], Awaitable[T]], what: str
    ) -> T:
        """One logical write: `fn` sends `req`, which gets the write's `RequestId` here, a seq
        from the write window held until the write ends (every retry re-sends that id)."""
        if self._closed:
            raise E.ClientClosed("client is closed")
        async with self._write_window.slot() as seq:
            req.request_id.CopyFrom(pb.RequestId(client_id=self._client_id, seq=seq))
            return await self._call(fn, what, route="leader", write=True)

    identified_writes = True  # every write carries a RequestId that its retries reuse

    def _rpc_error(self, e: grpc.aio.AioRpcError) -> E.RegistryError:
        return rpc_error(e)

    async def _pick_endpoint(self, route: Route, deadline: float) -> str:
        """The leader for leader-routed calls when known, else the best endpoint (a follower
        forwards)."""
        leader = await self._leader_endpoint(deadline) if route == "leader" else None
        return leader or self._pool.ordered()[0]

    def _mark_failed(self, endpoint: str) -> None:
        """Mark `endpoint` failed in the pool and forget the leader if it was the leader (the
        next leader-routed call rediscovers it)."""
        super()._mark_failed(endpoint)
        if endpoint == self._leader:
            self._leader = None
        self._leader_checked_at = -math.inf

    def _learn_members(self, members: Iterable[pb.Member]) -> None:
        for m in members:
            for url in m.clientURLs:
                try:
                    ep = normalize_endpoint(url)
                except E.InvalidArgument:
                    continue
                if ep in self._endpoints:
                    self._member_endpoints[m.ID] = ep
                    break

    async def _leader_endpoint(self, deadline: float) -> str | None:
        """The leader's endpoint if known (discovering it at most once per
        `rediscover_interval` unless a failure happened); None when unknown, not one of our
        endpoints, or recently unreachable."""
        now = self._clock.now
        if self._leader is not None and not self._pool.recently_failed(self._leader):
            return self._leader
        if now() - self._leader_checked_at < self._rediscover_interval:
            return None
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            if self._leader is not None and not self._pool.recently_failed(self._leader):
                return self._leader
            if now() - self._leader_checked_at < self._rediscover_interval:
                return None
            self._leader = await self._discover(deadline)
            self._leader_checked_at = now()
            if self._leader is not None and self._pool.recently_failed(self._leader):
                # The cluster still names a leader we just failed to reach: prefer a healthy
                # endpoint (it forwards) until the leader answers again or the penalty ends.
                return None
            return self._leader

    async def _discover(self, deadline: float) -> str | None:
        """Ask endpoints (best first) for the leader id until one knows it; map it to one of
        our endpoints through the Status answers seen and the member list's clientURLs."""
        pool = self._pool
        for ep in pool.ordered():
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return None
            c = pool.conn(ep)
            try:
                await pool.connect(ep, min(self._connect_timeout, remaining))
                st = await c.maintenance.Status(
                    pb.StatusRequest(), timeout=self._attempt_timeout(deadline)
                )
            except NotConnected:
                pool.mark_failed(ep)  # the pool's mark only: discovery is what is running
                continue
            except grpc.aio.AioRpcError as e:
                if retryable(rpc_error(e)):
                    pool.mark_failed(ep)
                continue
            self._member_endpoints[st.header.member_id] = ep
            if st.leader == 0:
                continue
            if st.leader == st.header.member_id:
                return ep
            if st.leader not in self._member_endpoints:
                try:
                    ml = await c.cluster.MemberList(
                        pb.MemberListRequest(),
                        timeout=self._attempt_timeout(deadline),
                    )
                except grpc.aio.AioRpcError:
                    return None
                self._learn_members(ml.members)
            return self._member_endpoints.get(st.leader)
        return None

    async def _kv_op(
        self, c: _Conn, timeout: float, unary: Any, op: pb.TaggedRequest
    ) -> Message:
        """One KV operation: unary when it is alone on the endpoint, else multiplexed over the
        endpoint's Batch stream (see raftreg.client.kvmux)."""
        alone = c.inflight == 0
        c.inflight += 1
        try:
            if alone:
                request = getattr(op, op.WhichOneof("request") or "")
                answer: Message = await unary(request, timeout=timeout)
                return answer
            try:
                return await c.mux().submit(op, timeout)
            except StreamFailure as e:
                raise E.Unavailable(str(e)) from None  # may have been applied
        finally:
            c.inflight -= 1
