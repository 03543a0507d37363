"""The grpc.aio server interceptor that authenticates every call and enforces the rules of
`raftreg.api.auth.rules` on its requests, and the wording of its refusals.

Authentication: every call except grpc.health.v1 (and Auth.Authenticate / Auth.AuthStatus, which
need no credential) must carry exactly one `authorization: Bearer <token>` metadata entry
matching a user (`raftreg.api.auth.policy.AuthPolicy.authenticate`; etcd's `token: <token>`
stands for it); otherwise UNAUTHENTICATED and nothing runs.

Authorization, per request, before the servicer sees it (PERMISSION_DENIED, nothing changed).
Refusals are worded by `raftreg.common.status.status_for`, and under etcd's service names
(`/etcdserverpb.KV/Put`, ...) as etcd's (`etcd_status_for`). On KV.Batch and Watch.Watch a
refused operation or create is answered on the stream, which carries on (see
`raftreg.api.auth.rules`). The cluster-internal principal "(cluster)" may ONLY call
LeaseKeepAlive.

While a call's behaviour runs, `_CALLER_AUTH` holds the call's `authorization` value, so that
forwards to the leader carry it (`raftreg.api.auth.security`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from raftreg.api.auth.policy import AuthPolicy, Principal
from raftreg.api.auth.rules import (
    _EXEMPT,
    _EXEMPT_PREFIX,
    BATCH,
    DELETE_RANGE,
    LEASE_GRANT,
    LEASE_KEEPALIVE,
    LEASE_LEASES,
    LEASE_REVOKE,
    LEASE_TTL,
    MEMBER_LIST,
    PUT,
    RANGE,
    STATUS,
    TXN,
    WATCH,
    Check,
    _anyone,
    _root,
    _verdict,
    _writer,
    check_delete,
    check_put,
    check_range,
    check_tagged,
    check_txn,
    native_method,
)
from raftreg.common.handlers import handler_behavior, rebuild_handler, refusing_handler
from raftreg.common.status import ERROR_KEY, StatusFor, etcd_status_for, status_for
from raftreg.errors import PermissionDenied, RegistryError, Unauthenticated
from raftreg.pb import raftreg_pb2 as pb

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = Any

log = logging.getLogger("raftreg.auth")

# The `authorization` value of the call being served (None: none), for forwarding.
_CALLER_AUTH: ContextVar[str | None] = ContextVar("raftreg_caller_auth", default=None)


async def _abort(context: Any, err: RegistryError, wording: StatusFor = status_for) -> None:
    code, details, md = wording(err)
    context.set_trailing_metadata(md)
    await context.abort(code, details)


def _refusing(handler: Handler, err: RegistryError,
              wording: StatusFor = status_for) -> Handler:
    """`handler` answering `err` without running (see `refusing_handler`)."""

    async def refuse(context: Any) -> None:
        await _abort(context, err, wording)

    return refusing_handler(handler, refuse)


def _guarded(behavior: Any, before: Callable[[Any, Any], Awaitable[None]],
             auth_value: str) -> Any:
    """`behavior` (any async kind) run after `await before(request, context)` (which may
    abort), with `_CALLER_AUTH` set to the caller's authorization."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            _CALLER_AUTH.set(auth_value)  # this call's own task: nothing to restore
            await before(request, context)
            async for item in behavior(request, context):
                yield item

        return agen

    async def coro(request: Any, context: Any) -> Any:
        token = _CALLER_AUTH.set(auth_value)
        try:
            await before(request, context)
            return await behavior(request, context)
        finally:
            _CALLER_AUTH.reset(token)

    return coro


class _Gate:
    """Runs a stream-stream async-generator behaviour on the admitted part of its request
    stream. `admit(request)` returns (what to pass on or None, what to answer or None);
    answers are merged into the response stream. `observe` sees every response the behaviour
    produced AFTER it is queued for the client (so an answer queued later follows it)."""

    def __init__(self, admit: Callable[[Any], Awaitable[tuple[Any, Any]]],
                 observe: Callable[[Any], None] = lambda r: None,
                 on_end: Callable[[], None] = lambda: None) -> None:
        self._admit = admit
        self._observe = observe
        self._on_end = on_end

    async def run(self, behavior: Any, request_iterator: AsyncIterator[Any],
                  context: Any) -> AsyncIterator[Any]:
        # One slot: the behaviour's own flow control (e.g. the watch buffer accounting, which
        # counts what it has yielded) still sees a slow client.
        out: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

        async def requests() -> AsyncIterator[Any]:
            async for req in request_iterator:
                passed, answer = await self._admit(req)
                if answer is not None:
                    await out.put((False, answer))
                if passed is not None:
                    yield passed

        async def pump() -> None:
            responses = behavior(requests(), context)
            try:
                async for resp in responses:
                    await out.put((False, resp))
                    self._observe(resp)
            except Exception as e:  # incl. grpc.aio.AbortError: re-raised by the caller
                self._on_end()
                await out.put((True, e))
            else:
                self._on_end()
                await out.put((True, None))
            finally:
                await responses.aclose()

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while True:
                final, item = await out.get()
                if not final:
                    yield item
                elif item is not None:
                    raise item
                else:
                    return
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:
                log.debug("stream behaviour ended with an error after its call", exc_info=True)


def _op_error(err: RegistryError) -> pb.OpError:
    code, details, md = status_for(err)
    return pb.OpError(code=code.value[0], message=details, kind=dict(md).get(ERROR_KEY, ""))


class AuthInterceptor(_ServerInterceptor):
    """Authenticates every call (except grpc.health.v1) and authorizes its requests by the
    rules in `raftreg.api.auth.rules`. Expects raftreg's servicers: async behaviours, and async
    generators for KV.Batch and Watch.Watch.

    `lease_keys(id)` gives the keys attached to a lease on this node's replica (None: no
    such lease); `header()` the response header for refused watch creates; `barrier()`, when
    given, is awaited before a lease's keys are read for LeaseRevoke / LeaseTimeToLive, so a
    lagging replica never checks them against an older key set (a Put racing the revoke on
    the leader can still attach a key between the check and the revoke)."""

    def __init__(
        self,
        policy: AuthPolicy,
        *,
        lease_keys: Callable[[int], Collection[bytes] | None],
        header: Callable[[], pb.ResponseHeader],
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self._lease_keys = lease_keys
        self._header = header
        self._barrier = barrier
        self._unary: dict[str, Check] = {
            RANGE: check_range,
            PUT: check_put,
            DELETE_RANGE: check_delete,
            TXN: check_txn,
            LEASE_GRANT: _writer,
            LEASE_REVOKE: self._check_revoke,
            LEASE_TTL: self._check_ttl,
            LEASE_LEASES: _writer,
            STATUS: _anyone,
            MEMBER_LIST: _anyone,
        }

    def _check_revoke(self, p: Principal, r: pb.LeaseRevokeRequest) -> None:
        p.need_writer()
        for key in sorted(self._lease_keys(r.ID) or ()):
            p.need_write(key)

    def _check_ttl(self, p: Principal, r: pb.LeaseTimeToLiveRequest) -> None:
        p.need_writer()
        if r.keys:
            for key in sorted(self._lease_keys(r.ID) or ()):
                p.need_read(key)

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method = native_method(details.method)
        wording = status_for if method == details.method else etcd_status_for
        if handler is None or method.startswith(_EXEMPT_PREFIX) or method in _EXEMPT:
            return handler
        try:
            principal, auth_value = self.policy.authenticate(details.invocation_metadata)
        except Unauthenticated as e:
            return _refusing(handler, e, wording)
        behavior = handler_behavior(handler)
        if behavior is None:
            return handler
        if principal.internal and method != LEASE_KEEPALIVE:
            return _refusing(handler, PermissionDenied(
                f"permission denied: the cluster-internal credential may not call {method}"),
                wording)
        if not handler.request_streaming:
            check = self._unary.get(method) or _root(method)
            needs_keys = method in (LEASE_REVOKE, LEASE_TTL)

            async def before(request: Any, context: Any) -> None:
                if needs_keys and self._barrier is not None:
                    try:
                        await self._barrier()
                    except RegistryError as e:
                        await _abort(context, e, wording)
                err = _verdict(check, principal, request)
                if err is not None:
                    await _abort(context, err, wording)

            return rebuild_handler(handler, _guarded(behavior, before, auth_value))
        if method == LEASE_KEEPALIVE:
            err = None if principal.internal else _verdict(_writer, principal, None)
        elif method in (BATCH, WATCH) and inspect.isasyncgenfunction(behavior):
            gate = self._batch_gate(principal) if method == BATCH else self._watch_gate(principal)

            async def gated(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
                _CALLER_AUTH.set(auth_value)
                async for item in gate.run(behavior, request_iterator, context):
                    yield item

            return rebuild_handler(handler, gated)
        else:
            err = _verdict(_root(method), principal, None)
        if err is not None:
            return _refusing(handler, err, wording)

        async def nothing(request: Any, context: Any) -> None:
            return None

        return rebuild_handler(handler, _guarded(behavior, nothing, auth_value))

    def _batch_gate(self, p: Principal) -> _Gate:
        async def admit(req: pb.BatchRequest) -> tuple[Any, Any]:
            allowed: list[pb.TaggedRequest] = []
            refused: list[pb.TaggedResponse] = []
            for op in req.ops:
                err = _verdict(check_tagged, p, op)
                if err is None:
                    allowed.append(op)
                else:
                    refused.append(pb.TaggedResponse(tag=op.tag, error=_op_error(err)))
            if not refused:
                return req, None
            passed = pb.BatchRequest(ops=allowed) if allowed else None
            return passed, pb.BatchResponse(results=refused)

        return _Gate(admit)

    def _watch_gate(self, p: Principal) -> _Gate:
        state = _WatchCreates()

        async def admit(req: pb.WatchRequest) -> tuple[Any, Any]:
            if req.WhichOneof("request_union") != "create_request":
                return req, None
            c = req.create_request
            err = _verdict(lambda p_, c_: p_.need_read(c_.key, c_.range_end), p, c)
            if err is None:
                state.outstanding += 1
                return req, None
            # First-in first-out answers to creates: wait for the earlier ones.
            while state.outstanding > 0 and not state.ended:
                state.answered.clear()
                await state.answered.wait()
            return None, pb.WatchResponse(
                header=self._header(), watch_id=c.watch_id or -1, created=True, canceled=True,
                cancel_reason=str(err),
            )

        def observe(resp: pb.WatchResponse) -> None:
            if resp.created:
                state.outstanding -= 1
                state.answered.set()

        def on_end() -> None:
            state.ended = True
            state.answered.set()

        return _Gate(admit, observe, on_end)


@dataclass
class _WatchCreates:
    outstanding: int = 0  # creates passed on and not yet answered
    ended: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)
