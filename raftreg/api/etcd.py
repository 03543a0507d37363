"""etcd's v3 gRPC API (`etcdserverpb.KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth`)
served by raftreg's own servicers, so etcdctl and etcd's clients in any language work against
a raftreg node.

raftreg.v1's messages carry etcd's field numbers (its extensions use numbers etcd does not),
so the same servicer code answers both names. What differs under etcd's names:
- errors are worded as etcd's (`raftreg.common.status.etcd_status_for`), because etcd clients
  match the messages;
- `Maintenance.Snapshot` frames the backup as etcd frames its file (trailing SHA-256);
- a stream opened with etcd's `hasleader: true` metadata (clientv3's `WithRequireLeader`, used
  by watches and keepalives) is refused with "etcdserver: no leader" while the node has none,
  and ended with it when the node loses its leader, as etcd does;
- raftreg's own extension `KV.Batch` is not offered.
The per-method semantics, and what raftreg cannot do the way etcd does, are in docs/etcd.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from raftreg.common.status import etcd_status_for
from raftreg.errors import NotApplied
from raftreg.pb import raftreg_pb2 as pb

ETCD_PACKAGE = "etcdserverpb"
REQUIRE_LEADER = ("hasleader", "true")
NO_LEADER = NotApplied("no leader")
_NOT_OFFERED = frozenset({"Batch"})


def _handler(method: MethodDescriptor, servicer: object,
             guard: Callable[[Any], Any]) -> grpc.RpcMethodHandler[Any, Any]:
    behavior = getattr(servicer, method.name)
    req = GetMessageClass(method.input_type).FromString
    resp = GetMessageClass(method.output_type).SerializeToString
    if method.server_streaming:
        behavior = guard(behavior)
        if method.client_streaming:
            return grpc.stream_stream_rpc_method_handler(behavior, req, resp)
        return grpc.unary_stream_rpc_method_handler(behavior, req, resp)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, req, resp)
    return grpc.unary_unary_rpc_method_handler(behavior, req, resp)


class _LeaderLoss:
    """One task per server, started by the first stream that asks: `lost` is set once the node
    has had no leader for `grace_s`, and cleared when it has one again. Streams wait on it, so
    an idle stream costs no wake-ups."""

    def __init__(self, has_leader: Callable[[], bool], grace_s: float, poll_s: float) -> None:
        self._has_leader = has_leader
        self._grace_s = grace_s
        self._poll_s = poll_s
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Called by a stream that found a leader: no earlier loss applies to it."""
        self.lost.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        since: float | None = None
        while True:
            if self._has_leader():
                since = None
                self.lost.clear()
            else:
                since = since if since is not None else loop.time()
                if loop.time() - since >= self._grace_s:
                    self.lost.set()
            await asyncio.sleep(self._poll_s)


def etcd_handlers(
    servicers: Mapping[str, object], has_leader: Callable[[], bool], *, grace_s: float,
    poll_s: float = 0.1,
) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """Generic handlers serving `servicers` (raftreg.v1 service name -> servicer built with
    `etcd=True`) under etcd's service names. A leader-requiring stream ends once the node has
    had no leader for `grace_s` (an election in progress does not end it)."""
    loss = _LeaderLoss(has_leader, grace_s, poll_s)

    def guard(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> AsyncIterator[Any]:
            if REQUIRE_LEADER not in tuple(context.invocation_metadata() or ()):
                async for item in behavior(request, context):
                    yield item
                return
            if not has_leader():
                await _abort_no_leader(context)
            loss.start()
            inner = behavior(request, context).__aiter__()
            nxt: asyncio.Future[Any] | None = None
            lost = asyncio.ensure_future(loss.lost.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(inner.__anext__())
                    await asyncio.wait((nxt, lost), return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        await _abort_no_leader(context)
                    try:
                        item = nxt.result()
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                lost.cancel()
                if nxt is not None and not nxt.done():
                    nxt.cancel()
                    await asyncio.wait((nxt,))
                await inner.aclose()  # type: ignore[attr-defined]

        return guarded

    out: list[grpc.GenericRpcHandler[Any, Any]] = []
    for name, servicer in servicers.items():
        service: ServiceDescriptor = pb.DESCRIPTOR.services_by_name[name]
        handlers = {m.name: _handler(m, servicer, guard) for m in service.methods
                    if m.name not in _NOT_OFFERED}
        out.append(grpc.method_handlers_generic_handler(f"{ETCD_PACKAGE}.{name}", handlers))
    return out


async def _abort_no_leader(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    code, details, md = etcd_status_for(NO_LEADER)
    context.set_trailing_metadata(md)
    await context.abort(code, details)
