"""Plumbing of grpc.aio bidi calls, shared by both backends: `write_all` (the one writer of a
call) and `KeepAliveCall` (one LeaseKeepAlive call as raftreg's `KeepAliveStream`).

Contracts:
- grpc.aio allows one write in flight per call, so each call has exactly one writer task,
  `write_all`, which writes queued requests in order until it is cancelled. A failed write
  ends the writer quietly: the call's read side reports the failure.
- `KeepAliveCall.recv` returns (lease id, TTL) per answer, TTL 0 for a lease the server does not
  know (expired or revoked), and raises the backend's `raftreg.errors` exception once the call
  failed or ended. Every answer reports the endpoint healthy (`on_answer`); the first failure
  reports it failed (`on_failure`), once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E

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

    `request(ID=lease_id)` builds a request, `response` is the answer's message class (etcd's
    LeaseKeepAliveResponse fields), `error` maps a failed call to a `raftreg.errors` exception.
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
    ) -> None:
        self._endpoint = endpoint
        self._request = request
        self._response = response
        self._error = error
        self._on_answer = on_answer
        self._on_failure = on_failure
        self._out: asyncio.Queue[Message] = asyncio.Queue()
        self._call = call
        self._writer = asyncio.get_running_loop().create_task(write_all(call, self._out))
        self._failed = False

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def send(self, lease_id: int) -> None:
        self._out.put_nowait(self._request(ID=lease_id))

    async def recv(self) -> tuple[int, int]:
        try:
            resp: Any = await self._call.read()
        except grpc.aio.AioRpcError as e:
            self._fail()
            raise self._error(e) from None
        if not isinstance(resp, self._response):  # grpc.aio.EOF
            self._fail()
            raise E.Unavailable(f"keepalive stream to {self._endpoint} ended")
        self._on_answer(self._endpoint)
        answer: Any = resp  # a LeaseKeepAliveResponse of the backend's messages
        return answer.ID, answer.TTL

    def _fail(self) -> None:
        if not self._failed:
            self._failed = True
            self._on_failure(self._endpoint)

    async def close(self) -> None:
        self._writer.cancel()
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
