"""Wrapping the behaviour of a grpc.aio `RpcMethodHandler` (server side), for all four kinds.

grpc.aio picks how to run a behaviour from its type: a coroutine function (unary response, or
the reader/writer API for a stream response), an async generator function (stream response), or
a plain function / generator run in the server's thread pool. `wrap_handler` keeps that type,
so every kind runs as before; it keeps the request deserializer and response serializer.

Hooks: `start(context)` runs before the behaviour and returns a token; `finish(token, context,
code)` runs once after it with the status code the call ends with (OK, the code set by
`abort`/`set_code`, UNKNOWN for an unexpected exception, CANCELLED or DEADLINE_EXCEEDED when the
call was cancelled). `check(context)` (async behaviours only) runs first and may abort the call.
A synchronous behaviour gets a thin proxy of its context that remembers the code it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from raftreg.common.status import NOT_EXECUTED_METADATA

Context = Any  # grpc.aio.ServicerContext; its stubs type `code()`/`time_remaining()` wrongly
Start = Callable[[Context], Any]
Finish = Callable[[Any, Context, grpc.StatusCode], None]
Check = Callable[[Context], Awaitable[None]]

_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


class _CodeRecordingContext:
    """Wraps the context grpc.aio hands a synchronous behaviour (it has no `code()`): remembers
    the code set through `set_code`/`abort`, delegates everything else."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> Any:
        self._code = code
        return self._context.abort(code, details, *args)


def _set_code(context: Context) -> grpc.StatusCode | None:
    code = context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)


def final_code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with, from its context and the behaviour's exception (if any)."""
    code = _set_code(context)
    if exc is None:
        return code or grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _wrap_unary_response(behavior: Any, start: Start, finish: Finish, check: Check | None) -> Any:
    if inspect.iscoroutinefunction(behavior):

        async def wrapped_async(request: Any, context: Context) -> Any:
            if check is not None:
                await check(context)
            token = start(context)
            exc: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                finish(token, context, final_code(context, exc))

        return wrapped_async

    def wrapped_sync(request: Any, grpc_context: Context) -> Any:
        context = _CodeRecordingContext(grpc_context)
        token = start(context)
        exc: BaseException | None = None
        try:
            return behavior(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            finish(token, context, final_code(context, exc))

    return wrapped_sync


def _wrap_stream_response(behavior: Any, start: Start, finish: Finish, check: Check | None) -> Any:
    if inspect.iscoroutinefunction(behavior):  # reader/writer API: same shape as unary
        return _wrap_unary_response(behavior, start, finish, check)

    if inspect.isasyncgenfunction(behavior):

        async def wrapped_agen(request: Any, context: Context) -> AsyncIterator[Any]:
            if check is not None:
                await check(context)
            token = start(context)
            exc: BaseException | None = None
            responses = behavior(request, context)
            try:
                async for item in responses:
                    yield item
            except BaseException as e:
                exc = e
                raise
            finally:
                try:
                    await responses.aclose()
                finally:
                    finish(token, context, final_code(context, exc))

        return wrapped_agen

    def wrapped_gen(request: Any, grpc_context: Context) -> Iterator[Any]:
        context = _CodeRecordingContext(grpc_context)
        token = start(context)
        exc: BaseException | None = None
        try:
            yield from behavior(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            finish(token, context, final_code(context, exc))

    return wrapped_gen


def rebuild_handler(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s kind and (de)serializers running `behavior`."""
    make: Callable[..., Any]
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    result: grpc.RpcMethodHandler[Any, Any] = make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return result


def handler_behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    """The behaviour of `handler` (whichever of its four kinds is set)."""
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def is_async_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> bool:
    """Whether the behaviour runs on the event loop (coroutine or async generator function)."""
    behavior = handler_behavior(handler)
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    *,
    start: Start,
    finish: Finish,
    check: Check | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour wrapped by the hooks (see the module docstring)."""
    behavior = handler_behavior(handler)
    if behavior is None:
        return handler
    if handler.response_streaming:
        wrapped = _wrap_stream_response(behavior, start, finish, check)
    else:
        wrapped = _wrap_unary_response(behavior, start, finish, check)
    result: grpc.RpcMethodHandler[Any, Any] = rebuild_handler(handler, wrapped)
    return result


def refusing_handler(
    handler: grpc.RpcMethodHandler[Any, Any], refuse: Callable[[Context], Awaitable[None]]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s kind (an async generator for an async-generator behaviour, so
    outer wrappers iterate it) that runs `refuse(context)` — which aborts — instead of the
    behaviour. A refused client stream has its first message read first: ending a call whose
    client is still sending made the client see INTERNAL ("Internal error from Core") instead
    of the refusal in about 5 % of calls."""
    streaming_request = handler.request_streaming

    async def drain_first(request: Any) -> None:
        if streaming_request:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(request)), 1.0)

    if inspect.isasyncgenfunction(handler_behavior(handler)):

        async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await drain_first(request)
            await refuse(context)
            yield  # pragma: no cover  (makes this an async generator; refuse aborts)

        stream_result: grpc.RpcMethodHandler[Any, Any] = rebuild_handler(handler, refuse_stream)
        return stream_result

    async def refuse_call(request: Any, context: Context) -> None:
        await drain_first(request)
        await refuse(context)

    result: grpc.RpcMethodHandler[Any, Any] = rebuild_handler(handler, refuse_call)
    return result


def rejecting_handler(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s kind that answers `code` without running the behaviour, with
    the not-executed marker in its trailing metadata."""

    async def reject(context: Context) -> None:
        context.set_trailing_metadata(NOT_EXECUTED_METADATA)
        await context.abort(code, details)

    return refusing_handler(handler, reject)
