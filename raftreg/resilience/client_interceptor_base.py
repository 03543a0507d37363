"""One grpc.aio client interceptor for every call kind, and how a call ended.

grpc.aio files a client interceptor object under the *first* call kind it implements only
(unary-unary, then unary-stream, ...). So `ClientInterceptor` is a unary-unary interceptor
with one `_intercept` for all kinds, whose `all_kinds()` adds adapters for the three streaming
kinds; `client_chain(a, b, ...)` flattens interceptors into the list to pass as
`grpc.aio.insecure_channel(target, interceptors=client_chain(...))`, the first outermost.
`observe` makes a call and reports its `Outcome` once (a unary-unary call before it returns,
a streaming call when it finishes). The interceptors themselves are in `client_interceptors`.
"""


from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from raftreg.resilience.rpc import metadata_pairs

if TYPE_CHECKING:
    UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor

Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]
# What `grpc.aio.insecure_channel(interceptors=...)` takes (grpc-stubs leave it a placeholder).
ChannelInterceptor = Any


def call_details(
    d: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = None,
    keep_timeout: bool = True,
    metadata: grpc.aio.Metadata | None = None,
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method,
        d.timeout if keep_timeout else timeout,
        d.metadata if metadata is None else metadata,
        d.credentials,
        d.wait_for_ready,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: Any

    def error(self) -> grpc.aio.AioRpcError:
        """The status as the exception a caller sees (meaningful when `code` is not OK)."""
        md = grpc.aio.Metadata(*metadata_pairs(self.trailing_metadata))
        return grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), md, self.details, None)


OK_OUTCOME = Outcome(grpc.StatusCode.OK, "", None)


class Reporters:
    """Holds the tasks that read a finished stream call's status (so they are not collected)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def when_done(self, call: Any, on_done: Callable[[Outcome], None]) -> None:
        def callback(_: Any) -> None:
            task = asyncio.get_running_loop().create_task(self._report(call, on_done))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        call.add_done_callback(callback)

    @staticmethod
    async def _report(call: Any, on_done: Callable[[Outcome], None]) -> None:
        code = await call.code()
        if code is grpc.StatusCode.OK:
            on_done(OK_OUTCOME)
        else:
            on_done(Outcome(code, await call.details() or "", await call.trailing_metadata()))


async def observe(
    continuation: Continuation,
    details: grpc.aio.ClientCallDetails,
    request: Any,
    streaming: bool,
    reporters: Reporters,
    on_done: Callable[[Outcome], None],
) -> Any:
    """Make the call and report its outcome once: for a unary-unary call before returning it,
    for streaming calls when they finish."""
    try:
        call = await continuation(details, request)
        if streaming:
            reporters.when_done(call, on_done)
            return call
        code = await call.code()
    except grpc.aio.AioRpcError as e:
        on_done(Outcome(e.code(), e.details() or "", e.trailing_metadata()))
        raise
    except asyncio.CancelledError:
        on_done(Outcome(grpc.StatusCode.CANCELLED, "cancelled", None))
        raise
    except Exception as e:  # an inner interceptor failed: the call ends UNKNOWN
        on_done(Outcome(grpc.StatusCode.UNKNOWN, repr(e), None))
        raise
    if code is grpc.StatusCode.OK:
        on_done(OK_OUTCOME)
    else:
        on_done(Outcome(code, await call.details() or "", await call.trailing_metadata()))
    return call


class ClientInterceptor(UnaryUnaryInterceptor):
    """Base: one `_intercept` for every call kind; `streaming` is true unless both the request
    and the response are unary. Pass `all_kinds()` to the channel to cover streams."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request, False)

    async def _intercept(
        self,
        continuation: Continuation,
        details: grpc.aio.ClientCallDetails,
        request: Any,
        streaming: bool,
    ) -> Any:
        raise NotImplementedError

    def all_kinds(self) -> list[ChannelInterceptor]:
        return [
            self,
            _UnaryStreamAdapter(self),
            _StreamUnaryAdapter(self),
            _StreamStreamAdapter(self),
        ]


class _UnaryStreamAdapter(_UnaryStream):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request, True)


class _StreamUnaryAdapter(_StreamUnary):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request_iterator, True)


class _StreamStreamAdapter(_StreamStream):
    def __init__(self, core: ClientInterceptor) -> None:
        self.core = core

    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self.core._intercept(continuation, client_call_details, request_iterator, True)


def client_chain(*interceptors: Any) -> list[ChannelInterceptor]:
    """The channel's interceptor list: each interceptor's `all_kinds()` (or itself), in order."""
    out: list[ChannelInterceptor] = []
    for i in interceptors:
        kinds = getattr(i, "all_kinds", None)
        out.extend(kinds() if kinds is not None else [i])
    return out


__all__ = [
    "OK_OUTCOME",
    "ChannelInterceptor",
    "ClientInterceptor",
    "Continuation",
    "Outcome",
    "Reporters",
    "UnaryUnaryInterceptor",
    "call_details",
    "client_chain",
    "observe",
]
