"""What every servicer shares: `rpc`, the single place where a `RegistryError` becomes a gRPC
status (through the servicer's `status_for`: raftreg's wording, or etcd's when the servicer
serves etcd's service names, see `raftreg.api.etcd`), and `ServicerBase` (the node, the
status table, response headers)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftreg.common.status import StatusFor, etcd_status_for, status_for
from raftreg.errors import RegistryError
from raftreg.pb import raftreg_pb2 as pb
from raftreg.server.node import RegistryNode

log = logging.getLogger("raftreg.api")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def rpc(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except RegistryError as e:
            await self.abort(context, e)
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the node's log")
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


def request_id(m: pb.RequestId) -> tuple[int, int]:
    return m.client_id, m.seq


class ServicerBase:
    """`etcd`: this instance serves etcd's service names, so errors are worded as etcd's."""

    def __init__(self, node: RegistryNode, *, etcd: bool = False) -> None:
        self.node = node
        self.etcd = etcd
        self.status_for: StatusFor = etcd_status_for if etcd else status_for

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any], err: RegistryError) -> None:
        """End the call with `err`'s status; always raises."""
        code, details, md = self.status_for(err)
        context.set_trailing_metadata(md)
        await context.abort(code, details)

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        n = self.node
        return pb.ResponseHeader(
            cluster_id=n.cluster_id,
            member_id=n.member_id,
            revision=n.revision if revision is None else revision,
            raft_term=n.raft.term,
        )
