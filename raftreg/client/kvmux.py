"""Multiplexing of concurrent KV operations over one `KV.Batch` stream per endpoint.

A unary gRPC call costs the Python server several hundred microseconds of CPU; a stream carries
many operations per message for a fraction of that. The client sends an operation as a unary
call when nothing else is in flight on that endpoint (lowest latency for a lone caller) and
through the endpoint's Batch stream otherwise, so concurrent callers share messages.

Contract of `KVMux.submit`: returns the operation's response message, raises the operation's
own `RegistryError` (built by the shared status table), the stream's `Unauthenticated` /
`PermissionDenied` when the server refused the whole stream (nothing ran), or raises
`StreamFailure` when the stream broke or no answer came in time — the operation may then have
been applied, and the caller retries it with the same request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.client import aio
from raftreg.common.status import COMPACT_KEY, ERROR_KEY, error_from_status
from raftreg.pb import raftreg_pb2 as pb


class StreamFailure(Exception):
    """The Batch stream ended or timed out before this operation was answered."""


def op_error(e: pb.OpError) -> E.RegistryError:
    """The exception for an operation answered with an error (same table as unary calls)."""
    md = [(ERROR_KEY, e.kind)] if e.kind else []
    if e.compact_revision:
        md.append((COMPACT_KEY, str(e.compact_revision)))
    code = next((c for c in grpc.StatusCode if c.value[0] == e.code), grpc.StatusCode.UNKNOWN)
    return error_from_status(code, e.message, md)


class KVMux:
    def __init__(self, stub: Any) -> None:
        """`stub` is a raftreg.v1 KV stub on a grpc.aio channel."""
        self._queue: list[pb.TaggedRequest] = []
        self._wake = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[pb.TaggedResponse]] = {}
        self._tags = itertools.count(1)
        self.broken = False
        self._call = stub.Batch(self._requests())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.BatchRequest]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._queue = self._queue, []
            if ops:
                yield pb.BatchRequest(ops=ops)

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                for r in resp.results:
                    fut = self._waiting.pop(r.tag, None)
                    if fut is not None and not fut.done():
                        fut.set_result(r)
        except grpc.aio.AioRpcError as e:
            md: Any = e.trailing_metadata() or ()
            err = error_from_status(e.code(), e.details() or "", tuple(md))
            # A stream refused as a whole (credentials) ran no operation: say so, not "broken".
            if isinstance(err, E.Unauthenticated | E.PermissionDenied):
                self._fail(err)
        finally:
            self._fail(StreamFailure("the batch stream ended before an answer"))

    def _fail(self, exc: Exception) -> None:
        self.broken = True
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    async def submit(self, op: pb.TaggedRequest, timeout: float) -> Message:
        if self.broken:
            raise StreamFailure("the batch stream is broken")
        tag = next(self._tags)
        op.tag = tag
        fut: asyncio.Future[pb.TaggedResponse] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = fut
        self._queue.append(op)
        self._wake.set()
        try:
            r = await aio.wait_for(fut, timeout)
        except TimeoutError:
            self._waiting.pop(tag, None)
            raise StreamFailure(f"no answer within {timeout:g}s") from None
        which = r.WhichOneof("response")
        if which == "error":
            raise op_error(r.error)
        if which is None:
            raise E.RegistryError("empty answer in batch stream")
        answer: Message = getattr(r, which)
        return answer

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
