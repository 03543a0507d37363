"""`GrpcRegistryClient`: the raftreg gRPC client (grpc.aio), leader-aware, with failover.

Contracts:
- One channel per endpoint, created lazily on the event loop of the first call; a client is
  bound to that loop.
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
- Every `grpc.aio.AioRpcError` becomes a `raftreg.errors` exception through `rpc_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.api import convert
from raftreg.api.status import ERROR_KEY, error_from_status
from raftreg.client.endpoints import normalize_endpoint, normalize_endpoints
from raftreg.client.grpc_watch import WatchMux
from raftreg.client.keepalive import LeaseKeeper
from raftreg.client.kvmux import KVMux, StreamFailure
from raftreg.client.protocol import (
    KeyLike,
    LeaseTTL,
    Member,
    NodeStatus,
    resolve_range,
    to_bytes,
)
from raftreg.client.watch import Watch, WatchFilter, WatchOptions
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.store.commands import (
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
Route = Literal["leader", "any"]

_MAX_CLIENT_ID = (1 << 63) - 1


def rpc_error(e: grpc.aio.AioRpcError) -> E.RegistryError:
    """The raftreg exception for a failed call (the client's one status -> exception mapping)."""
    return error_from_status(e.code(), e.details() or "", _trailing_metadata(e))


def _trailing_metadata(e: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    # grpc.aio returns an aio.Metadata (iterates as (key, value)); the stubs say otherwise.
    md: Iterable[tuple[str, str | bytes]] | None = cast(Any, e.trailing_metadata())
    return tuple((k, v) for k, v in md) if md else ()


def _server_vouched(e: grpc.aio.AioRpcError) -> bool:
    """True when a raftreg server itself produced the status (it then means what it says:
    a plain `Unavailable` from the server was not applied)."""
    return any(k == ERROR_KEY for k, _ in _trailing_metadata(e))


def _retryable(err: E.RegistryError) -> bool:
    return isinstance(err, E.Unavailable | E.DeadlineExceeded)


def _maybe_applied(e: grpc.aio.AioRpcError, err: E.RegistryError) -> bool:
    """Whether a failed write attempt may nevertheless have been applied."""
    if isinstance(err, E.OutcomeUnknown | E.DeadlineExceeded):
        return True
    return isinstance(err, E.Unavailable) and not _server_vouched(e)


class _RetryableFailure(Exception):
    """Internal: an attempt failed before any request left this client (not connected), or a
    stream ended without an answer. Always retryable; never means "maybe applied" unless
    `maybe_applied` is set."""

    def __init__(self, message: str, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class _Conn:
    """One endpoint's channel and stubs."""

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
        if self._mux is not None:
            await self._mux.close()
        await self.channel.close(None)


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


class GrpcRegistryClient:
    """A `RegistryClient` over raftreg's gRPC API.

    `timeout` bounds each attempt; `retry_budget` (default 2 x timeout) bounds a whole call
    including retries; `connect_timeout` bounds waiting for a connection to one endpoint.
    `client_id` (default random, 63 bits, non-zero) identifies this client's writes.
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
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        self._endpoints = normalize_endpoints(endpoints)
        if timeout <= 0 or connect_timeout <= 0:
            raise E.InvalidArgument("timeouts must be positive")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._budget = 2 * timeout if retry_budget is None else retry_budget
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._failure_penalty = failure_penalty
        self._rediscover_interval = rediscover_interval
        if client_id is not None and not 0 < client_id <= _MAX_CLIENT_ID:
            raise E.InvalidArgument("client_id must be in [1, 2**63 - 1]")
        self._client_id = client_id or (secrets.randbits(63) or 1)
        self._seq = itertools.count(1)
        self._options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            *channel_options,
        ]
        self._rng = random.Random()
        self._conns: dict[str, _Conn] = {}
        self._failed_at: dict[str, float] = {}
        self._leader: str | None = None
        self._leader_checked_at = -math.inf
        self._member_endpoints: dict[int, str] = {}
        self._discovery_lock: asyncio.Lock | None = None
        self._watch_mux: WatchMux | None = None
        self._keeper: LeaseKeeper | None = None
        self._closed = False

    # --- public properties -----------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def retry_budget(self) -> float:
        return self._budget

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
        req = convert.range_to_pb(
            Range(k, end, revision, limit, sort_order, sort_target, keys_only, count_only),
            serializable=serializable,
        )

        async def call(c: _Conn, t: float) -> RangeResult:
            resp = await self._kv_op(c, t, c.kv.Range, pb.TaggedRequest(range=req))
            assert isinstance(resp, pb.RangeResponse)
            return convert.range_result_from_pb(resp)

        return await self._call("any" if serializable else "leader", call, "get")

    async def put(
        self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        req = convert.put_to_pb(Put(to_bytes(key), to_bytes(value), lease, prev_kv))
        req.request_id.CopyFrom(self._next_request_id())

        async def call(c: _Conn, t: float) -> PutResult:
            resp = await self._kv_op(c, t, c.kv.Put, pb.TaggedRequest(put=req))
            assert isinstance(resp, pb.PutResponse)
            return convert.put_result_from_pb(resp)

        return await self._call("leader", call, "put", write=True)

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        k, end = resolve_range(key, range_end, prefix)
        req = convert.delete_to_pb(DeleteRange(k, end, prev_kv))
        req.request_id.CopyFrom(self._next_request_id())

        async def call(c: _Conn, t: float) -> DeleteResult:
            resp = await self._kv_op(c, t, c.kv.DeleteRange, pb.TaggedRequest(delete_range=req))
            assert isinstance(resp, pb.DeleteRangeResponse)
            return convert.delete_result_from_pb(resp)

        return await self._call("leader", call, "delete", write=True)

    async def txn(self, txn: Txn) -> TxnResult:
        req = convert.txn_to_pb(txn)
        req.request_id.CopyFrom(self._next_request_id())

        async def call(c: _Conn, t: float) -> TxnResult:
            resp = await self._kv_op(c, t, c.kv.Txn, pb.TaggedRequest(txn=req))
            assert isinstance(resp, pb.TxnResponse)
            return convert.txn_result_from_pb(resp)

        return await self._call("leader", call, "txn", write=True)

    async def compact(self, revision: int) -> int:
        req = pb.CompactionRequest(revision=revision)

        async def call(c: _Conn, t: float) -> int:
            return (await c.kv.Compact(req, timeout=t)).header.revision

        return await self._call("leader", call, "compact", write=True)

    # --- leases ----------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=id, request_id=self._next_request_id())

        async def call(c: _Conn, t: float) -> LeaseGrantResult:
            resp = await c.lease.LeaseGrant(req, timeout=t)
            if resp.error:
                raise E.RegistryError(resp.error)
            return LeaseGrantResult(resp.header.revision, resp.ID, resp.TTL)

        return await self._call("leader", call, "lease grant", write=True)

    async def lease_revoke(self, id: int) -> None:
        req = pb.LeaseRevokeRequest(ID=id, request_id=self._next_request_id())

        async def call(c: _Conn, t: float) -> None:
            await c.lease.LeaseRevoke(req, timeout=t)

        await self._call("leader", call, "lease revoke", write=True)

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTTL:
        req = pb.LeaseTimeToLiveRequest(ID=id, keys=keys)

        async def call(c: _Conn, t: float) -> LeaseTTL:
            r = await c.lease.LeaseTimeToLive(req, timeout=t)
            return LeaseTTL(r.ID or id, r.TTL, r.grantedTTL, tuple(r.keys))

        return await self._call("leader", call, "lease timetolive")

    async def lease_list(self) -> list[int]:
        async def call(c: _Conn, t: float) -> list[int]:
            r = await c.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=t)
            return [s.ID for s in r.leases]

        return await self._call("leader", call, "lease list")

    async def lease_keepalive_once(self, id: int) -> int:
        async def call(c: _Conn, t: float) -> int:
            stream = c.lease.LeaseKeepAlive(None, timeout=t)
            try:
                await stream.write(pb.LeaseKeepAliveRequest(ID=id))
                resp = await stream.read()
                if not isinstance(resp, pb.LeaseKeepAliveResponse):
                    raise _RetryableFailure("keepalive stream ended without an answer")
                return resp.TTL
            finally:
                stream.cancel()

        return await self._call("leader", call, "lease keepalive")

    async def open_keepalive_stream(self) -> _KeepAliveStream:
        """A LeaseKeepAlive stream (for `LeaseKeeper`), to the leader when known, else to the
        first healthy endpoint (which forwards). Raises `Unavailable` if it cannot connect;
        the stream marks its endpoint failed when it breaks, so the next one goes elsewhere."""
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        ep = await self._leader_endpoint(deadline) or self._ordered()[0]
        c = self._conn(ep)
        try:
            await self._connect(c, self._connect_timeout)
        except _RetryableFailure as f:
            self._mark_failed(ep)
            raise E.Unavailable(str(f)) from None
        return _KeepAliveStream(self, c)

    def keepalive_manager(self) -> LeaseKeeper:
        """This client's one `LeaseKeeper` (one stream for all leases; closed by `close()`)."""
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        if self._keeper is None:
            self._keeper = LeaseKeeper(self, backoff_base=self._backoff_base)
        return self._keeper

    # --- watches -----------------------------------------------------------------------------

    async def watch(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter | int] = (),
        progress_notify: bool = False,
    ) -> Watch:
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        k, end = resolve_range(key, range_end, prefix)
        options = WatchOptions.make(
            k,
            end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )
        if self._watch_mux is None:
            self._watch_mux = WatchMux(self)
        mux = self._watch_mux
        w = Watch(options, mux.cancel)
        mux.add(w)
        try:
            await asyncio.wait_for(w._wait_created(), self._budget)
        except TimeoutError:
            w.cancel()
            raise E.Unavailable(
                f"watch not confirmed by any endpoint within {self._budget:g}s"
            ) from None
        except BaseException:
            w.cancel()
            raise
        if w._failed is not None:
            w.cancel()
            raise w._failed
        return w

    async def list_then_watch(
        self, prefix: KeyLike, *, prev_kv: bool = False, progress_notify: bool = False
    ) -> tuple[RangeResult, Watch]:
        snapshot = await self.get(prefix, prefix=True)
        w = await self.watch(
            prefix,
            prefix=True,
            start_revision=snapshot.revision + 1,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
        return snapshot, w

    async def request_progress(self) -> None:
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        if self._watch_mux is not None:
            self._watch_mux.request_progress()

    @property
    def watch_endpoint(self) -> str | None:
        """The endpoint the shared watch stream is connected to (None when not connected)."""
        return None if self._watch_mux is None else self._watch_mux.endpoint

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

        return await self._call("any", call, "member list")

    async def status(self, endpoint: str | None = None) -> NodeStatus:
        async def call(c: _Conn, t: float) -> NodeStatus:
            r = await c.maintenance.Status(pb.StatusRequest(), timeout=t)
            if c.endpoint in self._endpoints:
                self._member_endpoints.setdefault(r.header.member_id, c.endpoint)
            return _node_status(c.endpoint, r)

        if endpoint is None:
            return await self._call("any", call, "status")
        return await self._call("any", call, "status", endpoint=normalize_endpoint(endpoint))

    # --- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.close()
        mux, self._watch_mux = self._watch_mux, None
        if mux is not None:
            await mux.close()
        conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            await c.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals -------------------------------------------------------------------------

    def _next_request_id(self) -> pb.RequestId:
        """The identity of one logical write; retries of that write reuse it."""
        return pb.RequestId(client_id=self._client_id, seq=next(self._seq))

    def _conn(self, endpoint: str) -> _Conn:
        c = self._conns.get(endpoint)
        if c is None:
            c = _Conn(endpoint, grpc.aio.insecure_channel(endpoint, options=self._options))
            self._conns[endpoint] = c
        return c

    async def _connect(self, c: _Conn, limit: float) -> None:
        """Return once `c` is READY; raise `_RetryableFailure` if it is failing or does not
        connect within `limit` seconds. Nothing has been sent when this raises."""
        ch = c.channel
        state = ch.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise _RetryableFailure(f"cannot connect to {c.endpoint}")

        async def settle() -> grpc.ChannelConnectivity:
            s: grpc.ChannelConnectivity = state
            while s in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
                await ch.wait_for_state_change(s)
                s = ch.get_state(try_to_connect=True)
            return s

        try:
            final = await asyncio.wait_for(settle(), max(limit, 0.001))
        except TimeoutError:
            raise _RetryableFailure(f"no connection to {c.endpoint} within {limit:.1f}s") from None
        if final is not grpc.ChannelConnectivity.READY:
            raise _RetryableFailure(f"cannot connect to {c.endpoint}")

    def _ordered(self) -> list[str]:
        """Endpoints to try, best first: healthy ones in configured order, then those that
        failed recently, least recently failed first."""
        now = asyncio.get_running_loop().time()

        def rank(item: tuple[int, str]) -> tuple[float, int]:
            i, ep = item
            t = self._failed_at.get(ep)
            recent = t is not None and now - t < self._failure_penalty
            return (t if recent and t is not None else -math.inf, i)

        return [ep for _, ep in sorted(enumerate(self._endpoints), key=rank)]

    def _recently_failed(self, endpoint: str) -> bool:
        t = self._failed_at.get(endpoint)
        return t is not None and asyncio.get_running_loop().time() - t < self._failure_penalty

    def _mark_failed(self, endpoint: str) -> None:
        self._failed_at[endpoint] = asyncio.get_running_loop().time()
        if endpoint == self._leader:
            self._leader = None
        self._leader_checked_at = -math.inf

    def _mark_ok(self, endpoint: str) -> None:
        self._failed_at.pop(endpoint, None)

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
        loop = asyncio.get_running_loop()
        if self._leader is not None and not self._recently_failed(self._leader):
            return self._leader
        if loop.time() - self._leader_checked_at < self._rediscover_interval:
            return None
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            if self._leader is not None and not self._recently_failed(self._leader):
                return self._leader
            if loop.time() - self._leader_checked_at < self._rediscover_interval:
                return None
            self._leader = await self._discover(deadline)
            self._leader_checked_at = loop.time()
            if self._leader is not None and self._recently_failed(self._leader):
                # The cluster still names a leader we just failed to reach: prefer a healthy
                # endpoint (it forwards) until the leader answers again or the penalty ends.
                return None
            return self._leader

    async def _discover(self, deadline: float) -> str | None:
        """Ask endpoints (best first) for the leader id until one knows it; map it to one of
        our endpoints through the Status answers seen and the member list's clientURLs."""
        loop = asyncio.get_running_loop()
        for ep in self._ordered():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            c = self._conn(ep)
            try:
                await self._connect(c, min(self._connect_timeout, remaining))
                st = await c.maintenance.Status(
                    pb.StatusRequest(), timeout=self._attempt_timeout(deadline)
                )
            except _RetryableFailure:
                self._failed_at[ep] = loop.time()
                continue
            except grpc.aio.AioRpcError as e:
                if _retryable(rpc_error(e)):
                    self._failed_at[ep] = loop.time()
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

    def _attempt_timeout(self, deadline: float) -> float:
        """The per-attempt deadline: `timeout`, cut to what is left of the budget."""
        left = deadline - asyncio.get_running_loop().time()
        return max(min(self._timeout, left), 0.001)

    def _backoff(self, attempt: int) -> float:
        d = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        return d / 2 + self._rng.uniform(0, d / 2)

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
                raise _RetryableFailure(str(e), maybe_applied=True) from None
        finally:
            c.inflight -= 1

    async def _call(
        self,
        route: Route,
        fn: Callable[[_Conn, float], Awaitable[T]],
        what: str,
        *,
        write: bool = False,
        endpoint: str | None = None,
    ) -> T:
        """Run `fn(conn, per_attempt_timeout)` with routing, failover and retries.

        With `endpoint` given, exactly one attempt is made against it. For a write, once any
        attempt may have been applied, running out of budget raises `OutcomeUnknown`."""
        if self._closed:
            raise E.FailedPrecondition("client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        maybe_applied = False
        attempts = 0
        last: E.RegistryError | None = None
        while True:
            attempts += 1
            if endpoint is not None:
                ep = endpoint
            else:
                ep = (await self._leader_endpoint(deadline) if route == "leader" else None) or (
                    self._ordered()[0]
                )
            c = self._conn(ep)
            try:
                await self._connect(c, min(self._connect_timeout, max(deadline - loop.time(), 0)))
                result = await fn(c, self._attempt_timeout(deadline))
            except _RetryableFailure as f:
                last = E.Unavailable(str(f))
                maybe_applied = maybe_applied or (write and f.maybe_applied)
            except grpc.aio.AioRpcError as e:
                err = rpc_error(e)
                if not _retryable(err):
                    raise err from None
                last = err
                maybe_applied = maybe_applied or (write and _maybe_applied(e, err))
            except E.RegistryError as err:  # an operation's own error from a Batch stream
                if not _retryable(err):
                    raise
                last = err
                maybe_applied = maybe_applied or (
                    write and isinstance(err, E.OutcomeUnknown | E.DeadlineExceeded)
                )
            else:
                self._mark_ok(ep)
                return result
            self._mark_failed(ep)
            if endpoint is not None:
                break
            delay = self._backoff(attempts)
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        assert last is not None
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if write and maybe_applied:
            raise E.OutcomeUnknown(f"{what}: outcome unknown after {tries}; last error: {last}")
        raise type(last)(f"{what} failed after {tries}; last error: {last}")


class _KeepAliveStream:
    """One LeaseKeepAlive bidi call (a `raftreg.client.keepalive.KeepAliveStream`). Requests
    are written by one writer task, in order (grpc.aio allows one write in flight)."""

    def __init__(self, client: GrpcRegistryClient, conn: _Conn) -> None:
        self._client = client
        self._endpoint = conn.endpoint
        self._out: asyncio.Queue[pb.LeaseKeepAliveRequest] = asyncio.Queue()
        self._call = conn.lease.LeaseKeepAlive(None)
        self._writer = asyncio.get_running_loop().create_task(self._write())
        self._failed = False

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def _write(self) -> None:
        while True:
            req = await self._out.get()
            try:
                await self._call.write(req)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the read side reports the failure

    def send(self, lease_id: int) -> None:
        self._out.put_nowait(pb.LeaseKeepAliveRequest(ID=lease_id))

    async def recv(self) -> tuple[int, int]:
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as e:
            self._fail()
            raise rpc_error(e) from None
        if not isinstance(resp, pb.LeaseKeepAliveResponse):
            self._fail()
            raise E.Unavailable(f"keepalive stream to {self._endpoint} ended")
        self._client._mark_ok(self._endpoint)
        return resp.ID, resp.TTL

    def _fail(self) -> None:
        if not self._failed:
            self._failed = True
            if not self._client._closed:
                self._client._mark_failed(self._endpoint)

    async def close(self) -> None:
        self._writer.cancel()
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
