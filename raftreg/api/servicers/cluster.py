"""The Cluster service: member list, add, remove, update and promote; a follower sends
membership changes to the leader over `LeaderLink`."""

from __future__ import annotations

import asyncio
from typing import Any

from raftreg.api.forward import LeaderLink
from raftreg.api.servicers.base import ServicerBase, rpc
from raftreg.errors import FailedPrecondition, InvalidArgument, NotFound
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode


class ClusterServicer(ServicerBase, pbg.ClusterServicer):
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

    @rpc
    async def MemberList(
        self, request: pb.MemberListRequest, context: Any
    ) -> pb.MemberListResponse:
        if request.linearizable:
            await self.node.barrier()
        return pb.MemberListResponse(header=self.header(), members=self._members())

    @rpc
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

    @rpc
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

    @rpc
    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: Any
    ) -> pb.MemberUpdateResponse:
        # A member's peer address cannot change in place: remove it and add it again.
        raise FailedPrecondition("not capable")

    @rpc
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
