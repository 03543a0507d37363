"""The example API gateway: HTTP/JSON in front of the `user` (and `chat`) instances it
discovers in the registry, balancing every call across them on the client side.

`python -m services.gateway --id g1 --policy weighted_round_robin --registry raftreg://...`
registers as service `gateway` with its HTTP address.

HTTP API:
- `GET /user?id=N`, `GET /user/{id}` (no id: user 1): GetUser on one `user` instance picked by
  the policy, within a deadline of `--deadline-ms` for the whole request (retries included) ->
  200 `{"id": N, "name", "age", "served_by"}`. A call that fails with UNAVAILABLE (the
  instance is dead or unreachable) is retried on another instance, up to `--attempts`
  instances. Errors are JSON `{"error", "code"}`: 400 bad id, 404 NOT_FOUND, 503 no instance
  or UNAVAILABLE everywhere, 504 DEADLINE_EXCEEDED, 429 RESOURCE_EXHAUSTED, 502 anything else.
  The balancing key (for `consistent_hash`) is the `X-Route-Key` header, else the `key` query
  parameter, else the user id.
- `POST /chat` `{"content": "..."}`: one message through a `chat` instance's SyncStream ->
  `{"content": "Echo: ...", "timestamp", "served_by"}`.
- `GET /stats`: the policy, the live `user` instances, calls served per instance, outstanding
  calls, ejected instances, `stale_for` (seconds since the resolver heard from the registry;
  null before the first list), the resolver's revision, HTTP responses by status, and the
  same for `chat`.
- `POST /admin/policy` `{"policy": NAME}`: switch the balancing policy live (a new balancer
  with fresh state, also when NAME is the current policy).
- `GET /healthz`: 200 while at least one `user` instance is known, else 503.
"""

from __future__ import annotations

import asyncio
import collections
import math
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
import grpc.aio
from aiohttp import web

from raftreg.client.protocol import RegistryClient
from raftreg.discovery import (
    POLICIES,
    Instance,
    NoInstance,
    OutlierDetector,
    Resolver,
    ServiceChannels,
    make_balancer,
)
from raftreg.errors import InvalidArgument
from services.chat import now_ms
from services.pb import chat_pb2, chat_pb2_grpc, user_pb2, user_pb2_grpc
from services.runtime import (
    ServiceRuntime,
    ServiceSettings,
    run_service,
    service_parser,
    settings_from_args,
)

T = TypeVar("T")
ROUTE_KEY_HEADER = "X-Route-Key"

HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType({
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
})


class EmptyStream(Exception):
    """The chat stream ended without an answer."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """`deadline` (seconds) bounds one HTTP request including its retries; `attempts` is how
    many instances one request may try."""

    user_service: str = "user"
    chat_service: str = "chat"
    policy: str = "weighted_round_robin"
    deadline: float = 1.0
    attempts: int = 3
    start_timeout: float = 10.0


def _instance_json(inst: Instance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "address": inst.address,
        "weight": inst.weight,
        "zone": inst.zone,
        "version": inst.version,
        "metadata": dict(inst.metadata),
    }


def _finite(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


class Gateway:
    """The gateway's routing state and HTTP handlers; see the module docstring.

    Extension points: `users` / `chats` (`ServiceChannels`: `set_policy`, `outlier`, `served`)
    and their resolvers are public attributes; `deadline` may be changed live; every upstream
    call goes through `call_users` / `call_chats`, the one place to add rate limits or
    breakers. `start()` / `stop()` follow and release the registry (the caller owns `client`).
    """

    def __init__(
        self,
        client: RegistryClient,
        settings: GatewaySettings,
        *,
        instance_id: str = "",
        outlier: OutlierDetector | None = None,
    ) -> None:
        make_balancer(settings.policy)  # InvalidArgument for an unknown policy, before anything
        self.settings = settings
        self.instance_id = instance_id
        self.deadline = settings.deadline
        self.user_resolver = Resolver(client, settings.user_service)
        self.users = ServiceChannels(
            self.user_resolver, policy=settings.policy, outlier=outlier,
            attempts=settings.attempts,
        )
        self.chat_resolver = Resolver(client, settings.chat_service)
        self.chats = ServiceChannels(
            self.chat_resolver, policy="round_robin", attempts=settings.attempts
        )
        self.responses: collections.Counter[int] = collections.Counter()

    async def start(self) -> None:
        """Follow both services; returns after their first list (`Unavailable` after
        `start_timeout`)."""
        await asyncio.gather(
            self.user_resolver.start(timeout=self.settings.start_timeout),
            self.chat_resolver.start(timeout=self.settings.start_timeout),
        )
        self.users.start()
        self.chats.start()

    async def stop(self) -> None:
        await self.users.close()
        await self.chats.close()
        await self.user_resolver.stop()
        await self.chat_resolver.stop()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/user", self.handle_user)
        app.router.add_get("/user/{id}", self.handle_user)
        app.router.add_post("/chat", self.handle_chat)
        app.router.add_get("/stats", self.handle_stats)
        app.router.add_post("/admin/policy", self.handle_policy)
        app.router.add_get("/healthz", self.handle_healthz)

    # ------------------------------------------------------------------ upstream calls

    def _timeout(self, deadline_at: float) -> float:
        return max(0.001, deadline_at - asyncio.get_running_loop().time())

    async def call_users(
        self, fn: Callable[[grpc.aio.Channel], Awaitable[T]], *, key: bytes | None = None
    ) -> T:
        return await self.users.call(fn, key=key)

    async def call_chats(self, fn: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        return await self.chats.call(fn)

    async def get_user(
        self, user_id: str, *, key: bytes | None = None
    ) -> user_pb2.GetUserResponse:
        """GetUser on a balanced instance within `deadline`. Raises `grpc.aio.AioRpcError` or
        `NoInstance`."""
        deadline_at = asyncio.get_running_loop().time() + self.deadline
        request = user_pb2.GetUserRequest(user_id=user_id)

        async def call(channel: grpc.aio.Channel) -> user_pb2.GetUserResponse:
            stub = user_pb2_grpc.UserServiceStub(channel)
            return await stub.GetUser(request, timeout=self._timeout(deadline_at))

        return await self.call_users(call, key=key)

    async def chat(self, content: str) -> chat_pb2.Message:
        """One message through a chat instance's SyncStream; its one answer. Raises
        `grpc.aio.AioRpcError`, `NoInstance` or `EmptyStream`."""
        deadline_at = asyncio.get_running_loop().time() + self.deadline

        async def call(channel: grpc.aio.Channel) -> chat_pb2.Message:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            stream = stub.SyncStream(None, timeout=self._timeout(deadline_at))
            try:
                await stream.write(chat_pb2.Message(content=content, timestamp=now_ms()))
                await stream.done_writing()
                reply = await stream.read()
                if not isinstance(reply, chat_pb2.Message):
                    raise EmptyStream("the chat stream ended without an answer")
                await stream.code()  # the server ends the stream after our half-close
                return reply
            finally:
                stream.cancel()

        return await self.call_chats(call)

    # ------------------------------------------------------------------ HTTP

    def _json(self, doc: dict[str, Any], status: int = 200) -> web.Response:
        self.responses[status] += 1
        return web.json_response(doc, status=status)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return self._json({"error": message, "code": code}, status)

    def _upstream_error(self, e: grpc.aio.AioRpcError | NoInstance | EmptyStream) -> web.Response:
        if isinstance(e, NoInstance):
            return self._error(503, "NO_INSTANCE", str(e))
        if isinstance(e, EmptyStream):
            return self._error(502, "EMPTY_STREAM", str(e))
        code = e.code()
        return self._error(HTTP_STATUS.get(code, 502), code.name, e.details() or code.name)

    async def handle_user(self, request: web.Request) -> web.Response:
        raw = request.match_info.get("id") or request.query.get("id") or "1"
        try:
            uid = int(raw)
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", f"id {raw!r} is not an integer")
        route_key = request.headers.get(ROUTE_KEY_HEADER) or request.query.get("key") or str(uid)
        try:
            user = await self.get_user(str(uid), key=route_key.encode())
        except (grpc.aio.AioRpcError, NoInstance) as e:
            return self._upstream_error(e)
        return self._json(
            {"id": uid, "name": user.name, "age": user.age, "served_by": user.served_by}
        )

    async def handle_chat(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", "the body is not JSON")
        content = doc.get("content") if isinstance(doc, dict) else None
        if not isinstance(content, str):
            return self._error(400, "INVALID_ARGUMENT", 'expected {"content": "..."}')
        try:
            reply = await self.chat(content)
        except (grpc.aio.AioRpcError, NoInstance, EmptyStream) as e:
            return self._upstream_error(e)
        return self._json(
            {"content": reply.content, "timestamp": reply.timestamp, "served_by": reply.served_by}
        )

    def stats(self) -> dict[str, Any]:
        return {
            "gateway": self.instance_id,
            "service": self.users.service,
            "policy": self.users.policy,
            "deadline_ms": round(self.deadline * 1000),
            "instances": [_instance_json(i) for i in self.user_resolver.instances],
            "served": dict(sorted(self.users.served.items())),
            "outstanding": dict(sorted(self.users.outstanding.items())),
            "ejected": sorted(self.users.outlier.ejected()),
            "stale_for": _finite(self.user_resolver.stale_for()),
            "revision": self.user_resolver.revision,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "chat": {
                "service": self.chats.service,
                "instances": [_instance_json(i) for i in self.chat_resolver.instances],
                "served": dict(sorted(self.chats.served.items())),
                "stale_for": _finite(self.chat_resolver.stale_for()),
            },
        }

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def handle_policy(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            name = doc.get("policy") if isinstance(doc, dict) else None
            if not isinstance(name, str):
                raise InvalidArgument('expected {"policy": NAME}')
            self.users.set_policy(make_balancer(name))
        except (ValueError, InvalidArgument) as e:
            return web.json_response(
                {"error": str(e), "code": "INVALID_ARGUMENT", "policies": sorted(POLICIES)},
                status=400,
            )
        return web.json_response({"policy": self.users.policy})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        n = len(self.user_resolver.instances)
        return web.json_response({"user_instances": n}, status=200 if n else 503)


def build(settings: ServiceSettings, gateway: GatewaySettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, http=True, register="http")
    gw = Gateway(rt.client, gateway, instance_id=settings.id)
    assert rt.http_app is not None
    gw.add_routes(rt.http_app)
    rt.on_start(gw.start)
    rt.on_stop(gw.stop)
    return rt


def main(argv: Sequence[str] | None = None) -> int:
    p = service_parser("gateway", "HTTP/JSON gateway balancing over the user instances.")
    p.add_argument("--policy", default="weighted_round_robin", choices=sorted(POLICIES))
    p.add_argument("--user-service", default="user", help="service name of the user instances")
    p.add_argument("--chat-service", default="chat", help="service name of the chat instances")
    p.add_argument("--deadline-ms", type=int, default=1000,
                   help="deadline of one request, retries included")
    p.add_argument("--attempts", type=int, default=3, help="instances one request may try")
    ns = p.parse_args(argv)
    gw = GatewaySettings(
        user_service=ns.user_service, chat_service=ns.chat_service, policy=ns.policy,
        deadline=ns.deadline_ms / 1000, attempts=ns.attempts,
    )
    return run_service(settings_from_args(ns), lambda s: build(s, gw))


if __name__ == "__main__":
    sys.exit(main())
