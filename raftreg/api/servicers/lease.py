"""The Lease service: grant, revoke, keep-alive streams, time-to-live and the list of leases.
Keep-alives and time-to-live are the leader's (its lessor); a follower asks the leader over
`LeaderLink`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from raftreg.api.forward import LeaderLink
from raftreg.api.servicers.base import ServicerBase, request_id, rpc
from raftreg.common.types import LeaseGrantResult
from raftreg.errors import LeaseNotFound, RegistryError
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
