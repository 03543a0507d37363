"""The Lease service: grant, revoke, keep-alive streams, time-to-live and the list of leases.
Keep-alives and time-to-live are the leader's (its lessor); a follower asks the leader over
`LeaderLink`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from raftreg.api.forward import LeaderLink
from raftreg.api.servicers.base import ServicerBase, request_id, rpc
from raftreg.common.types import LeaseGrantResult
from raftreg.config import MAX_KEEPALIVE_IDS
from raftreg.errors import InvalidArgument, LeaseNotFound, RegistryError
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode
from raftreg.store.commands import LeaseGrant, LeaseRevoke


class LeaseServicer(ServicerBase, pbg.LeaseServicer):
    def __init__(self, node: RegistryNode, link: LeaderLink, *, etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self.link = link

    @rpc
    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: Any
    ) -> pb.LeaseGrantResponse:
        ttl = max(request.TTL, self.node.cfg.settings.min_lease_ttl)
        result = await self.node.write(
            LeaseGrant(request.ID, ttl), *request_id(request.request_id)
        )
        assert isinstance(result, LeaseGrantResult)
        return pb.LeaseGrantResponse(
            header=self.header(result.revision), ID=result.id, TTL=result.ttl
        )

    @rpc
    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: Any
    ) -> pb.LeaseRevokeResponse:
        result = await self.node.write(LeaseRevoke(request.ID), *request_id(request.request_id))
        return pb.LeaseRevokeResponse(header=self.header(result.revision))

    async def _renew(self, lease_ids: Sequence[int]) -> list[int]:
        if self.node.raft.is_leader:
            return await self.node.lessor.renew_many(lease_ids)
        return await self.link.keepalive(lease_ids)

    async def _answer(self, req: pb.LeaseKeepAliveRequest) -> pb.LeaseKeepAliveResponse:
        """etcd's request (`ID`) gets etcd's answer; raftreg's (`IDs`) one answer for all."""
        batches = not self.etcd
        if not req.IDs:
            ttl = (await self._renew((req.ID,)))[0]
            return pb.LeaseKeepAliveResponse(header=self.header(), ID=req.ID, TTL=ttl,
                                             batches=batches)
        ids = [req.ID, *req.IDs] if req.ID else list(req.IDs)
        if len(ids) > MAX_KEEPALIVE_IDS:
            raise InvalidArgument(
                f"a keepalive names {len(ids)} leases; at most {MAX_KEEPALIVE_IDS} per message")
        ttls = await self._renew(ids)
        return pb.LeaseKeepAliveResponse(header=self.header(), IDs=ids, TTLs=ttls,
                                         batches=batches)

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest], context: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        """Requests are served concurrently; each answer names its lease(s). A renewal that
        cannot be confirmed, or a request naming too many leases, ends the stream with the
        error, so the client reconnects elsewhere. Once the client has half-closed, the stream
        ends after the last answer (as etcd's)."""
        out: asyncio.Queue[pb.LeaseKeepAliveResponse | RegistryError | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(req: pb.LeaseKeepAliveRequest) -> None:
            try:
                out.put_nowait(await self._answer(req))
            except RegistryError as e:
                out.put_nowait(e)

        async def read() -> None:
            async for req in request_iterator:
                t = asyncio.create_task(serve(req))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(set(tasks))
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, RegistryError):
                    await self.abort(context, item)
                else:
                    yield item
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()

    @rpc
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

    @rpc
    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: Any
    ) -> pb.LeaseLeasesResponse:
        await self.node.barrier()
        leases = self.node.lease_ids()
        return pb.LeaseLeasesResponse(
            header=self.header(), leases=[pb.LeaseStatus(ID=i) for i in leases]
        )
