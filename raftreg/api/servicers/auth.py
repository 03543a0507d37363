"""The Auth service: authenticate (a user name and password, checked by `verify`, for a
token) and whether authentication is on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftreg.api.servicers.base import ServicerBase, rpc
from raftreg.errors import FailedPrecondition, InvalidArgument
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.server.node import RegistryNode


class AuthServicer(ServicerBase, pbg.AuthServicer):
    """etcd's Authenticate and AuthStatus over raftreg's token model (see raftreg.proto)."""

    def __init__(self, node: RegistryNode, verify: Callable[[str, str], bool] | None, *,
                 etcd: bool = False) -> None:
        super().__init__(node, etcd=etcd)
        self.verify = verify  # None: auth is off

    @rpc
    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: Any
    ) -> pb.AuthenticateResponse:
        if self.verify is None:
            raise FailedPrecondition("authentication is not enabled")
        if not self.verify(request.name, request.password):
            raise InvalidArgument("authentication failed, invalid user ID or password")
        return pb.AuthenticateResponse(header=self.header(), token=request.password)

    @rpc
    async def AuthStatus(
        self, request: pb.AuthStatusRequest, context: Any
    ) -> pb.AuthStatusResponse:
        return pb.AuthStatusResponse(header=self.header(), enabled=self.verify is not None)
