"""grpc.aio servicers for raftreg.v1 over a `RegistryNode`.

Every handler is wrapped by `_rpc`, the single place where a `RegistryError` becomes a gRPC
status, through the servicer's `status_for` (`raftreg.common.status`: raftreg's wording, or etcd's
when the servicer serves etcd's service names, see `raftreg.api.etcd`). Handlers only convert
and delegate; they hold no state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftreg import __version__
from raftreg.api.forward import LeaderLink
from raftreg.common import convert
from raftreg.common.status import (
    COMPACT_KEY,
    ERROR_KEY,
    NOTE_KEY,
    StatusFor,
    etcd_status_for,
    status_for,
)
from raftreg.common.types import DeleteResult, LeaseGrantResult, PutResult, TxnResult
from raftreg.errors import (
    FailedPrecondition,
    InvalidArgument,
    LeaseNotFound,
    NotFound,
    RegistryError,
)
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode
from raftreg.server.watch_hub import Outgoing, WatchSpec
from raftreg.store.backup import encode_backup, with_etcd_trailer
from raftreg.store.commands import Compact, LeaseGrant, LeaseRevoke, Result
from raftreg.store.validate import check_key_range

log = logging.getLogger("raftreg.api")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def _rpc(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except RegistryError as e:
            await self.abort(context, e)
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the node's log")
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


def _request_id(m: pb.RequestId) -> tuple[int, int]:
    return m.client_id, m.seq


class _Base:
    """`etcd`: this instance serves etcd's service names, so errors are worded as etcd's."""

    def __init__(self, node: RegistryNode, *, etcd: bool = False) -> None:
        self.node = node
        self.etcd = etcd
        self.status_for: StatusFor = etcd_status_for if etcd else status_for

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any], err: RegistryError) -> None:
        """End the call with `err`'s status; always raises."""
        code, details, md = self.status_for(err)
        context.set_trailing_metadata(md)
        await context.abort(code, details)

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        n = self.node
        return pb.ResponseHeader(
            cluster_id=n.cluster_id,
            member_id=n.member_id,
            revision=n.revision if revision is None else revision,
            raft_term=n.raft.term,
        )


class KVServicer(_Base, pbg.KVServicer):
    # The operations, shared by the unary calls and by Batch; they raise RegistryError.

    async def range(self, request: pb.RangeRequest) -> pb.RangeResponse:
        r = convert.range_from_pb(request)
        result = await self.node.read(r, serializable=request.serializable)
        return convert.range_result_to_pb(result, self.header(result.revision))

    async def put(self, request: pb.PutRequest) -> pb.PutResponse:
        result = await self.node.write(
            convert.put_from_pb(request), *_request_id(request.request_id)
        )
        assert isinstance(result, PutResult)
        return convert.put_result_to_pb(result, self.header(result.revision))

    async def delete_range(self, request: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        result = await self.node.write(
            convert.delete_from_pb(request), *_request_id(request.request_id)
        )
        assert isinstance(result, DeleteResult)
        return convert.delete_result_to_pb(result, self.header(result.revision))

    async def txn(self, request: pb.TxnRequest) -> pb.TxnResponse:
        txn = convert.txn_from_pb(request)
        result = await self.node.write(txn, *_request_id(request.request_id))
        assert isinstance(result, TxnResult)
        return convert.txn_result_to_pb(result, self.header(result.revision))

    @_rpc
    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        return await self.range(request)

    @_rpc
    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return await self.put(request)

    @_rpc
    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: Any
    ) -> pb.DeleteRangeResponse:
        return await self.delete_range(request)

    @_rpc
    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        return await self.txn(request)

    @_rpc
    async def Compact(
        self, request: pb.CompactionRequest, context: Any
    ) -> pb.CompactionResponse:
        result: Result = await self.node.write(Compact(request.revision))
        return pb.CompactionResponse(header=self.header(result.revision))

    async def _answer(self, op: pb.TaggedRequest) -> pb.TaggedResponse:
        which = op.WhichOneof("request")
        try:
            if which == "range":
                return pb.TaggedResponse(tag=op.tag, range=await self.range(op.range))
            if which == "put":
                return pb.TaggedResponse(tag=op.tag, put=await self.put(op.put))
            if which == "delete_range":
                resp = await self.delete_range(op.delete_range)
                return pb.TaggedResponse(tag=op.tag, delete_range=resp)
            if which == "txn":
                return pb.TaggedResponse(tag=op.tag, txn=await self.txn(op.txn))
            raise InvalidArgument("empty operation in batch")
        except RegistryError as e:
            code, details, md = self.status_for(e)
            meta = dict(md)
            return pb.TaggedResponse(
                tag=op.tag,
                error=pb.OpError(
                    code=code.value[0],
                    message=details,
                    kind=meta.get(ERROR_KEY, ""),
                    compact_revision=int(meta.get(COMPACT_KEY, "0")),
                ),
            )

    async def Batch(
        self, request_iterator: AsyncIterator[pb.BatchRequest], context: Any
    ) -> AsyncIterator[pb.BatchResponse]:
        """Operations run concurrently (so concurrent writes share a raft entry); answers that
        complete in the same loop turn leave in one message."""
        done: list[pb.TaggedResponse] = []
        wake = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        reading = True

        async def run(op: pb.TaggedRequest) -> None:
            try:
                done.append(await self._answer(op))
            except Exception:
                log.exception("internal error in batch operation")
                done.append(pb.TaggedResponse(tag=op.tag, error=pb.OpError(
                    code=grpc.StatusCode.INTERNAL.value[0], message="internal error")))
            wake.set()

        async def read() -> None:
            nonlocal reading
            try:
                async for msg in request_iterator:
                    for op in msg.ops:
                        t = asyncio.create_task(run(op))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
            finally:
                reading = False
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while reading or tasks or done:
                await wake.wait()
                wake.clear()
                if done:
                    batch, done[:] = list(done), []
                    yield pb.BatchResponse(results=batch)
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()


class LeaseServicer(_Base, pbg.LeaseServicer):
    def __init__(self, node: RegistryNode, link: LeaderLink, *, etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self.link = link

    @_rpc
    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: Any
    ) -> pb.LeaseGrantResponse:
        ttl = max(request.TTL, self.node.cfg.settings.min_lease_ttl)
        result = await self.node.write(
            LeaseGrant(request.ID, ttl), *_request_id(request.request_id)
        )
        assert isinstance(result, LeaseGrantResult)
        return pb.LeaseGrantResponse(
            header=self.header(result.revision), ID=result.id, TTL=result.ttl
        )

    @_rpc
    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: Any
    ) -> pb.LeaseRevokeResponse:
        result = await self.node.write(LeaseRevoke(request.ID), *_request_id(request.request_id))
        return pb.LeaseRevokeResponse(header=self.header(result.revision))

    async def _renew(self, lease_id: int) -> int:
        if self.node.raft.is_leader:
            return await self.node.lessor.renew(lease_id)
        return await self.link.keepalive(lease_id)

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest], context: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        """Requests are served concurrently; each answer names its lease. A renewal that cannot
        be confirmed ends the stream with the error, so the client reconnects elsewhere."""
        out: asyncio.Queue[pb.LeaseKeepAliveResponse | RegistryError] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(lease_id: int) -> None:
            try:
                ttl = await self._renew(lease_id)
                out.put_nowait(pb.LeaseKeepAliveResponse(header=self.header(), ID=lease_id,
                                                         TTL=ttl))
            except RegistryError as e:
                out.put_nowait(e)

        async def read() -> None:
            async for req in request_iterator:
                t = asyncio.create_task(serve(req.ID))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if isinstance(item, RegistryError):
                    await self.abort(context, item)
                else:
                    yield item
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()

    @_rpc
    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Any
    ) -> pb.LeaseTimeToLiveResponse:
        if not self.node.raft.is_leader:
            return await self.link.time_to_live(request)
        try:
            left, lease = await self.node.lessor.remaining(request.ID)
        except LeaseNotFound:
            return pb.LeaseTimeToLiveResponse(header=self.header(), ID=request.ID, TTL=-1)
        return pb.LeaseTimeToLiveResponse(
            header=self.header(),
            ID=request.ID,
            TTL=left,
            grantedTTL=lease.ttl,
            keys=sorted(lease.keys) if request.keys else [],
        )

    @_rpc
    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: Any
    ) -> pb.LeaseLeasesResponse:
        await self.node.barrier()
        leases = self.node.lease_ids()
        return pb.LeaseLeasesResponse(
            header=self.header(), leases=[pb.LeaseStatus(ID=i) for i in leases]
        )


class WatchServicer(_Base, pbg.WatchServicer):
    def _to_pb(self, m: Outgoing) -> pb.WatchResponse:
        return pb.WatchResponse(
            header=self.header(m.revision),
            watch_id=m.watch_id,
            created=m.created,
            canceled=m.canceled,
            compact_revision=m.compact_revision,
            cancel_reason=m.cancel_reason,
            events=[convert.event_to_pb(e) for e in m.events],
        )

    async def Watch(
        self, request_iterator: AsyncIterator[pb.WatchRequest], context: Any
    ) -> AsyncIterator[pb.WatchResponse]:
        hub = self.node.watches
        stream = hub.open_stream()

        async def read() -> None:
            async for req in request_iterator:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    c = req.create_request
                    try:
                        check_key_range(c.key, c.range_end)
                        spec = WatchSpec(
                            key=c.key,
                            range_end=c.range_end,
                            start_revision=max(c.start_revision, 0),
                            prev_kv=c.prev_kv,
                            no_put=pb.WatchCreateRequest.NOPUT in c.filters,
                            no_delete=pb.WatchCreateRequest.NODELETE in c.filters,
                            progress_notify=c.progress_notify,
                        )
                    except RegistryError as e:
                        stream.send(Outgoing(c.watch_id or -1, self.node.revision, created=True,
                                             canceled=True, cancel_reason=str(e)))
                        continue
                    hub.create(stream, spec, c.watch_id)
                elif which == "cancel_request":
                    hub.cancel(stream, req.cancel_request.watch_id)
                elif which == "progress_request":
                    t = asyncio.create_task(progress())
                    pending.add(t)
                    t.add_done_callback(pending.discard)

        pending: set[asyncio.Task[None]] = set()

        async def progress() -> None:
            # Answered after a read barrier, so the revision it reports covers every write
            # acknowledged before the request, on followers too. A node that cannot reach the
            # majority stays silent (as etcd does while a watcher is not synced).
            try:
                await self.node.barrier()
            except RegistryError:
                return
            hub.progress(stream)

        reader = asyncio.create_task(read())
        try:
            while True:
                msg = await stream.queue.get()
                if msg is None:
                    break
                stream.taken(msg)
                yield self._to_pb(msg)
        finally:
            reader.cancel()
            for t in pending:
                t.cancel()
            stream.close()


class ClusterServicer(_Base, pbg.ClusterServicer):
    """Membership. Changes are made by the leader, one at a time: a follower forwards them;
    removing the leader first hands the leadership to a caught-up follower, then forwards."""

    def __init__(self, node: RegistryNode, link: LeaderLink, *, etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self.link = link

    def _members(self) -> list[pb.Member]:
        n = self.node
        st = n.raft_status()
        scheme = "https" if n.cfg.settings.tls_cert_file else "http"
        out = []
        for m in n.members:
            is_self = m.id == n.member_id
            out.append(
                pb.Member(
                    ID=m.id,
                    name=m.name,
                    peerURLs=[f"tcp://{m.raft}"],
                    clientURLs=[f"{scheme}://{m.client}"] if m.client else [],
                    isLeader=st.leader == m.raft,
                    connected=is_self or m.raft in st.connected,
                )
            )
        return out

    @_rpc
    async def MemberList(
        self, request: pb.MemberListRequest, context: Any
    ) -> pb.MemberListResponse:
        if request.linearizable:
            await self.node.barrier()
        return pb.MemberListResponse(header=self.header(), members=self._members())

    @_rpc
    async def MemberAdd(self, request: pb.MemberAddRequest, context: Any) -> pb.MemberAddResponse:
        if request.isLearner:
            raise FailedPrecondition("not capable")  # raftreg has no learners
        if len(request.peerURLs) != 1 or len(request.clientURLs) > 1:
            raise InvalidArgument("give exactly one peer URL and at most one client URL")
        n = self.node
        if not n.raft.is_leader:
            resp: pb.MemberAddResponse = await self.link.cluster(
                "MemberAdd", request, self._change_timeout)
            return resp
        peer = _strip_scheme(request.peerURLs[0])
        client = _strip_scheme(request.clientURLs[0]) if request.clientURLs else ""
        # Shielded: a caller that gives up must not cut a membership change in half.
        m = await asyncio.shield(n.add_member(request.name or peer, peer, client))
        added = next(x for x in self._members() if m.id == x.ID)
        return pb.MemberAddResponse(header=self.header(), member=added, members=self._members())

    @_rpc
    async def MemberRemove(
        self, request: pb.MemberRemoveRequest, context: Any
    ) -> pb.MemberRemoveResponse:
        n = self.node
        if not any(m.id == request.ID for m in n.members):
            raise NotFound(f"member {request.ID:x} not found")
        if n.raft.is_leader and n.member_id == request.ID:
            await n.step_down(self._change_timeout)
        if not n.raft.is_leader:
            resp: pb.MemberRemoveResponse = await self.link.cluster(
                "MemberRemove", request, self._change_timeout)
            return resp
        await asyncio.shield(n.remove_member(request.ID))
        return pb.MemberRemoveResponse(header=self.header(), members=self._members())

    @_rpc
    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: Any
    ) -> pb.MemberUpdateResponse:
        # A member's peer address cannot change in place: remove it and add it again.
        raise FailedPrecondition("not capable")

    @_rpc
    async def MemberPromote(
        self, request: pb.MemberPromoteRequest, context: Any
    ) -> pb.MemberPromoteResponse:
        if not any(m.id == request.ID for m in self.node.members):
            raise NotFound("member not found")
        raise FailedPrecondition("can only promote a learner member")

    @property
    def _change_timeout(self) -> float:
        return 2 * self.node.cfg.settings.propose_timeout_s


def _strip_scheme(url: str) -> str:
    """host:port from "http://host:port", "tcp://host:port" or "host:port"."""
    return url.split("://", 1)[-1].rstrip("/")


class MaintenanceServicer(_Base, pbg.MaintenanceServicer):
    CHUNK = 1 << 20

    def snapshot_file(self, blob: bytes) -> bytes:
        """The backup as the client expects the file: etcd's framing under etcd's name."""
        return with_etcd_trailer(blob) if self.etcd else blob

    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SnapshotResponse]:
        n = self.node
        try:
            state, revision = await n.backup()
        except RegistryError as e:
            await self.abort(context, e)
        blob = self.snapshot_file(encode_backup(state, cluster=n.cfg.settings.name,
                                                revision=revision,
                                                created_at_ms=int(time.time() * 1000)))
        header = self.header(revision)
        for off in range(0, len(blob), self.CHUNK):
            chunk = blob[off:off + self.CHUNK]
            yield pb.SnapshotResponse(
                header=header if off == 0 else None, blob=chunk, version=__version__,
                remaining_bytes=len(blob) - off - len(chunk),
            )

    @_rpc
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        n = self.node
        st = n.raft_status()
        keys, compact_rev, h, leases = n.store_stats()
        leader = n.leader_member()
        errors = [] if st.has_quorum else ["no quorum: this node cannot reach a majority"]
        if leader is None:
            errors.append("no leader")
        return pb.StatusResponse(
            header=self.header(),
            version=__version__,
            dbSize=n.disk_usage(),
            leader=0 if leader is None else leader.id,
            raftIndex=st.commit_index,
            raftTerm=st.term,
            raftAppliedIndex=st.applied_index,
            errors=errors,
            name=n.me.name,
            keys=keys,
            compact_revision=compact_rev,
            hash=h,
            leases=leases,
            watchers=n.watcher_count(),
        )

    @_rpc
    async def Alarm(self, request: pb.AlarmRequest, context: Any) -> pb.AlarmResponse:
        if request.action == pb.AlarmRequest.ACTIVATE:
            raise InvalidArgument("raftreg raises no alarms (it has no space quota)")
        return pb.AlarmResponse(header=self.header())

    @_rpc
    async def Defragment(
        self, request: pb.DefragmentRequest, context: Any
    ) -> pb.DefragmentResponse:
        context.set_trailing_metadata(
            ((NOTE_KEY, "nothing to defragment: raftreg keeps no bbolt file"),))
        return pb.DefragmentResponse(header=self.header())

    @_rpc
    async def Hash(self, request: pb.HashRequest, context: Any) -> pb.HashResponse:
        _, _, h, _ = self.node.store_stats()
        return pb.HashResponse(header=self.header(), hash=h & 0xFFFFFFFF)

    @_rpc
    async def HashKV(self, request: pb.HashKVRequest, context: Any) -> pb.HashKVResponse:
        if request.revision < 0:
            raise InvalidArgument("revision must not be negative")
        h, at, compacted = self.node.hash_kv(request.revision)
        return pb.HashKVResponse(header=self.header(), hash=h, compact_revision=compacted,
                                 hash_revision=at)

    @_rpc
    async def MoveLeader(
        self, request: pb.MoveLeaderRequest, context: Any
    ) -> pb.MoveLeaderResponse:
        n = self.node
        target = next((m for m in n.members if m.id == request.targetID), None)
        if target is None:
            raise NotFound("member not found")
        if not n.raft.is_leader:
            raise FailedPrecondition("not leader")
        if target.id != n.member_id:
            await n.step_down(2 * n.cfg.settings.propose_timeout_s, target=target.raft)
        return pb.MoveLeaderResponse(header=self.header())


class AuthServicer(_Base, pbg.AuthServicer):
    """etcd's Authenticate and AuthStatus over raftreg's token model (see raftreg.proto)."""

    def __init__(self, node: RegistryNode, verify: Callable[[str, str], bool] | None, *,
                 etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self.verify = verify  # None: auth is off

    @_rpc
    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: Any
    ) -> pb.AuthenticateResponse:
        if self.verify is None:
            raise FailedPrecondition("authentication is not enabled")
        if not self.verify(request.name, request.password):
            raise InvalidArgument("authentication failed, invalid user ID or password")
        return pb.AuthenticateResponse(header=self.header(), token=request.password)

    @_rpc
    async def AuthStatus(
        self, request: pb.AuthStatusRequest, context: Any
    ) -> pb.AuthStatusResponse:
        return pb.AuthStatusResponse(header=self.header(), enabled=self.verify is not None)
