"""The Maintenance service: snapshot (a backup streamed in chunks, in etcd's framing under
etcd's name), status, alarms, defragment, hashes and leadership transfer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftreg import __version__
from raftreg.api.servicers.base import ServicerBase, rpc
from raftreg.common.status import NOTE_KEY
from raftreg.errors import FailedPrecondition, InvalidArgument, NotFound, RegistryError
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.store.backup import encode_backup, with_etcd_trailer


class MaintenanceServicer(ServicerBase, pbg.MaintenanceServicer):
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

    @rpc
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        n = self.node
        st = n.raft_status()
        keys, compact_rev, leases = n.store_counts()
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
            hash=n.store_hash() if request.with_hash else 0,
            leases=leases,
            watchers=n.watcher_count(),
        )

    @rpc
    async def Alarm(self, request: pb.AlarmRequest, context: Any) -> pb.AlarmResponse:
        if request.action == pb.AlarmRequest.ACTIVATE:
            raise InvalidArgument("raftreg raises no alarms (it has no space quota)")
        return pb.AlarmResponse(header=self.header())

    @rpc
    async def Defragment(
        self, request: pb.DefragmentRequest, context: Any
    ) -> pb.DefragmentResponse:
        context.set_trailing_metadata(
            ((NOTE_KEY, "nothing to defragment: raftreg keeps no bbolt file"),))
        return pb.DefragmentResponse(header=self.header())

    @rpc
    async def Hash(self, request: pb.HashRequest, context: Any) -> pb.HashResponse:
        return pb.HashResponse(header=self.header(), hash=self.node.store_hash() & 0xFFFFFFFF)

    @rpc
    async def HashKV(self, request: pb.HashKVRequest, context: Any) -> pb.HashKVResponse:
        if request.revision < 0:
            raise InvalidArgument("revision must not be negative")
        h, at, compacted = self.node.hash_kv(request.revision)
        return pb.HashKVResponse(header=self.header(), hash=h, compact_revision=compacted,
                                 hash_revision=at)

    @rpc
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
