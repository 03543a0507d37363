"""Plumbing of grpc.aio bidi calls, shared by both backends: `write_all` (the one writer of a
call) and `KeepAliveCall` (one LeaseKeepAlive call as raftreg's `KeepAliveStream`).

Contracts:
- grpc.aio allows one write in flight per call, so each call has exactly one writer task,
  `write_all`, which writes queued requests in order until it is cancelled. A failed write
  ends the writer quietly: the call's read side reports the failure.
- `KeepAliveCall.send` takes many leases (one request for all where the server takes that);
  `recv` returns (lease id, TTL) per lease answered, TTL 0 for a lease the server does not
  know (expired or revoked), and raises the backend's `raftreg.errors` exception once the call
  failed or ended. Every answer reports the endpoint healthy (`on_answer`); the first failure
  reports it failed (`on_failure`), once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.common.keepalive_wire import RenewalWire

# An open grpc.aio bidi call (StreamStreamCall of a backend's request/response messages).
BidiCall = Any


async def write_all(call: BidiCall, outgoing: asyncio.Queue[Message]) -> None:
    """The call's one writer: writes `outgoing` in order until cancelled or a write fails."""
    while True:
        req = await outgoing.get()
        try:
            await call.write(req)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the read side reports the failure


class KeepAliveCall:
    """One LeaseKeepAlive bidi call to `endpoint` (a `raftreg.client.keepalive.KeepAliveStream`).

    `request(ID=lease_id)` / `request(IDs=[...])` builds a request, `response` is the answer's
    message class (etcd's LeaseKeepAliveResponse fields, plus raftreg's `IDs`/`TTLs`/`batches`
    where it has them), `error` maps a failed call to a `raftreg.errors` exception. Renewals
    travel as `raftreg.common.keepalive_wire.RenewalWire` decides (`batches=False`: one lease
    per request from the start).
    """

    def __init__(
        self,
        call: BidiCall,
        endpoint: str,
        *,
        request: Callable[..., Message],
        response: type[Message],
        error: Callable[[grpc.aio.AioRpcError], E.RegistryError],
        on_answer: Callable[[str], None],
        on_failure: Callable[[str], None],
        batches: bool | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._wire = RenewalWire(request, batches=batches)
        self._response = response
        self._error = error
        self._on_answer = on_answer
        self._on_failure = on_failure
        self._out: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: collections.deque[tuple[int, int]] = collections.deque()
        self._call = call
        self._writer = asyncio.get_running_loop().create_task(write_all(call, self._out))
        self._failed = False

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def send(self, lease_ids: Sequence[int]) -> None:
        for req in self._wire.encode(lease_ids):
            self._out.put_nowait(req)

    async def recv(self) -> tuple[int, int]:
        while not self._answers:
            try:
                resp: Any = await self._call.read()
            except grpc.aio.AioRpcError as e:
                self._fail()
                raise self._error(e) from None
            if not isinstance(resp, self._response):  # grpc.aio.EOF
                self._fail()
                raise E.Unavailable(f"keepalive stream to {self._endpoint} ended")
            try:
                pairs, held = self._wire.decode(resp)
            except E.RegistryError:
                self._fail()
                raise
            self._on_answer(self._endpoint)
            for req in held:
                self._out.put_nowait(req)
            self._answers.extend(pairs)
        return self._answers.popleft()

    def _fail(self) -> None:
        if not self._failed:
            self._failed = True
            self._on_failure(self._endpoint)

    async def close(self) -> None:
        self._writer.cancel()
        self._call.cancel()
        # gather, not suppress(CancelledError): a cancellation of the caller goes on.
        await asyncio.gather(self._writer, return_exceptions=True)
