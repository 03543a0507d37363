"""Forwarding of leader-only lease requests from a follower to the leader's client API.

Writes need no help here (the consensus layer forwards proposals); lease keepalives and
time-to-live are not replicated, so a follower relays them: unary calls over a channel to the
current leader, keepalives over one shared LeaseKeepAlive stream (many leases per request
where the leader takes that, `raftreg.common.keepalive_wire`) whose answers are matched to
callers by lease id, first come first served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from raftreg.common.keepalive_wire import RenewalWire
from raftreg.common.status import error_from_status
from raftreg.errors import NotApplied, Unavailable
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg

log = logging.getLogger("raftreg.forward")


class LeaderLink:
    def __init__(
        self,
        leader_client_addr: Callable[[], str | None],
        timeout: float,
        *,
        channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        # `channel(addr)` opens the channel to a leader: TLS and the forwarded credentials
        # are its business (raftreg.api.auth.security.NodeSecurity.leader_channel).
        self._new_channel = channel
        self._addr = leader_client_addr
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._channel_addr: str | None = None
        self._ka_queue: asyncio.Queue[Message] | None = None
        self._ka_wire: RenewalWire | None = None
        self._ka_waiters: dict[int, deque[asyncio.Future[int]]] = defaultdict(deque)
        self._ka_task: asyncio.Task[None] | None = None

    def _stub(self) -> Any:  # an aio LeaseStub (the generated stubs are typed for sync channels)
        return pbg.LeaseStub(self._leader_channel())

    def _leader_channel(self) -> grpc.aio.Channel:
        addr = self._addr()
        if addr is None:
            raise NotApplied("no leader to forward to")
        if addr != self._channel_addr:
            self._reset()
            self._channel = self._new_channel(addr)
            self._channel_addr = addr
        assert self._channel is not None
        return self._channel

    async def cluster(self, method: str, req: Any, timeout: float) -> Any:
        """Forward one Cluster RPC (`method`, e.g. "MemberAdd") to the leader."""
        try:
            return await getattr(pbg.ClusterStub(self._leader_channel()), method)(
                req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            md: Any = e.trailing_metadata() or ()
            raise error_from_status(e.code(), e.details() or "", md) from None

    def _reset(self) -> None:
        if self._ka_task is not None:
            self._ka_task.cancel()
            self._ka_task = None
        self._fail_waiters(Unavailable("leader changed while forwarding a keepalive"))
        if self._channel is not None:
            asyncio.get_running_loop().create_task(self._channel.close(None))
        self._channel = None
        self._channel_addr = None

    def _fail_waiters(self, exc: Exception) -> None:
        for q in self._ka_waiters.values():
            for fut in q:
                if not fut.done():
                    fut.set_exception(exc)
        self._ka_waiters.clear()

    async def time_to_live(self, req: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        try:
            resp = await self._stub().LeaseTimeToLive(req, timeout=self._timeout)
            assert isinstance(resp, pb.LeaseTimeToLiveResponse)
            return resp
        except grpc.aio.AioRpcError as e:
            md: Any = e.trailing_metadata() or ()
            err = error_from_status(e.code(), e.details() or "", md)
            raise err from None

    async def keepalive(self, lease_ids: Sequence[int]) -> list[int]:
        """Renew `lease_ids` at the leader; their TTLs in the same order."""
        stub = self._stub()
        if self._ka_task is None or self._ka_task.done():
            self._ka_queue = asyncio.Queue()
            self._ka_wire = RenewalWire(pb.LeaseKeepAliveRequest)
            self._ka_task = asyncio.create_task(
                self._run_keepalive_stream(stub, self._ka_queue, self._ka_wire))
        assert self._ka_queue is not None and self._ka_wire is not None
        loop = asyncio.get_running_loop()
        futs: list[tuple[int, asyncio.Future[int]]] = []
        for lease_id in lease_ids:
            fut: asyncio.Future[int] = loop.create_future()
            self._ka_waiters[lease_id].append(fut)
            futs.append((lease_id, fut))
        for req in self._ka_wire.encode(lease_ids):
            self._ka_queue.put_nowait(req)
        try:
            async with asyncio.timeout(self._timeout):
                return [await fut for _, fut in futs]
        except TimeoutError:
            for lease_id, fut in futs:
                with contextlib.suppress(ValueError):
                    self._ka_waiters[lease_id].remove(fut)
            raise Unavailable("the leader did not answer the keepalive in time") from None

    async def _run_keepalive_stream(
        self, stub: Any, queue: asyncio.Queue[Message], wire: RenewalWire
    ) -> None:
        async def requests() -> AsyncIterator[Message]:
            while True:
                yield await queue.get()

        call = stub.LeaseKeepAlive(requests())
        try:
            async for resp in call:
                pairs, held = wire.decode(resp)
                for req in held:
                    queue.put_nowait(req)
                for lease_id, ttl in pairs:
                    waiters = self._ka_waiters.get(lease_id)
                    if waiters:
                        fut = waiters.popleft()
                        if not fut.done():
                            fut.set_result(ttl)
        except grpc.aio.AioRpcError as e:
            log.info("keepalive forwarding stream ended: %s", e.code())
            self._fail_waiters(Unavailable(f"forwarding to the leader failed: {e.details()}"))
        except Unavailable as e:
            log.warning("keepalive forwarding stream unusable: %s", e)
            self._fail_waiters(e)  # the next keepalive opens a new stream
        else:
            # The leader closed the stream without an error: nobody will answer the waiters.
            self._fail_waiters(Unavailable("the leader ended the keepalive forwarding stream"))
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._ka_task is not None:
            self._ka_task.cancel()
        if self._channel is not None:
            await self._channel.close(None)
