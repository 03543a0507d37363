"""The KV service (Range, Put, DeleteRange, Txn, Compact) and raftreg.v1's Batch: many
tagged KV operations over one stream, answered as each completes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftreg.api.servicers.base import ServicerBase, request_id, rpc
from raftreg.common import convert
from raftreg.common.status import COMPACT_KEY, ERROR_KEY
from raftreg.common.types import DeleteResult, PutResult, TxnResult
from raftreg.errors import InvalidArgument, RegistryError
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.store.commands import Compact, Result

log = logging.getLogger("raftreg.api")


class KVServicer(ServicerBase, pbg.KVServicer):
    # The operations, shared by the unary calls and by Batch; they raise RegistryError.

    async def range(self, request: pb.RangeRequest) -> pb.RangeResponse:
        r = convert.range_from_pb(request)
        result = await self.node.read(r, serializable=request.serializable)
        return convert.range_result_to_pb(result, self.header(result.revision))

    async def put(self, request: pb.PutRequest) -> pb.PutResponse:
        result = await self.node.write(
            convert.put_from_pb(request), *request_id(request.request_id)
        )
        assert isinstance(result, PutResult)
        return convert.put_result_to_pb(result, self.header(result.revision))

    async def delete_range(self, request: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        result = await self.node.write(
            convert.delete_from_pb(request), *request_id(request.request_id)
        )
        assert isinstance(result, DeleteResult)
        return convert.delete_result_to_pb(result, self.header(result.revision))

    async def txn(self, request: pb.TxnRequest) -> pb.TxnResponse:
        txn = convert.txn_from_pb(request)
        result = await self.node.write(txn, *request_id(request.request_id))
        assert isinstance(result, TxnResult)
        return convert.txn_result_to_pb(result, self.header(result.revision))

    @rpc
    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        return await self.range(request)

    @rpc
    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return await self.put(request)

    @rpc
    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: Any
    ) -> pb.DeleteRangeResponse:
        return await self.delete_range(request)

    @rpc
    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        return await self.txn(request)

    @rpc
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
