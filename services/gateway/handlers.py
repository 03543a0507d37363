"""The gateway itself (`Gateway`): its aiohttp routes and handlers (`/user`, `/chat`, `/stats`,
`/admin/policy`, `/healthz`), the HTTP rate limit in front of the API routes, the mapping of
upstream failures to HTTP statuses and JSON error bodies, the `/stats` document and its
counters, and the live config it follows from the config center (`ConfigWatcher`), applied to
the limiter here and to the upstream calls through `Upstream.configure_upstream`. The routes,
answers and settings are documented in docs/gateway.md. Imports `config`, `ratelimit` and
`upstream`; nothing in the package imports it but `app`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio
from aiohttp import web

from raftreg.client.protocol import RegistryClient
from raftreg.configcenter import ConfigWatcher
from raftreg.discovery import POLICIES, Instance, NoInstance, OutlierDetector, make_balancer
from raftreg.errors import DeadlineExceeded, InvalidArgument
from raftreg.resilience import (
    MONOTONIC,
    Clock,
    Deadline,
    deadline_from_header,
    deadline_scope,
    earliest,
)
from services.gateway.config import (
    GatewayConfig,
    GatewaySettings,
    config_changes,
    config_parser,
)
from services.gateway.ratelimit import HttpRateLimiter
from services.gateway.upstream import AllCircuitsOpen, EmptyStream, Upstream

# One logger for the whole gateway package: its log lines keep the name they always had.
log = logging.getLogger("services.gateway")

ROUTE_KEY_HEADER = "X-Route-Key"
TIMEOUT_HEADERS = ("grpc-timeout", "X-Request-Timeout")

HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType({
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
})


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


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Gateway(Upstream):
    """The gateway's routing state and HTTP handlers; see docs/gateway.md.

    `users` / `chats` (`ServiceChannels`) and their resolvers, `breakers`, `http_limiter` and
    `config` (the `GatewayConfig` in force) are public attributes; every upstream call goes
    through `call_users` / `call_chats` (`Upstream`). `start()` / `stop()` follow and release
    the registry and the config (the caller owns `client`)."""

    def __init__(
        self,
        client: RegistryClient,
        settings: GatewaySettings,
        *,
        instance_id: str = "",
        outlier: OutlierDetector | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        make_balancer(settings.policy)  # InvalidArgument for an unknown policy, before anything
        self.instance_id = instance_id
        self._parse = config_parser(settings.config_defaults())
        try:
            config = self._parse({})
        except ValueError as e:
            raise InvalidArgument(f"gateway settings: {e}") from None
        self.http_limiter = HttpRateLimiter(config.ratelimit, clock=clock)
        super().__init__(client, settings, config, outlier=outlier, clock=clock)
        self.watcher: ConfigWatcher[GatewayConfig] | None = None
        if settings.config_service is not None:
            self.watcher = ConfigWatcher(
                client, settings.config_service, self._parse, self._apply_config
            )
        self.responses: collections.Counter[int] = collections.Counter()
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.fallbacks = 0

    async def start(self) -> None:
        """Load the live settings, then follow both services; returns after their first list
        (`Unavailable` after `start_timeout`; `InvalidArgument` for an invalid stored config)."""
        if self.watcher is not None:
            await self.watcher.start()
        await super().start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await super().stop()

    def _apply_config(self, new: GatewayConfig, old: GatewayConfig | None) -> None:
        """Put `new` in force (the watcher calls this for the initial config and each valid
        change, one at a time)."""
        self.http_limiter.configure(new.ratelimit)
        self.configure_upstream(new, old)
        revision = self.watcher.revision if self.watcher is not None else 0
        log.info(
            "config revision %d in force: %s", revision, " ".join(config_changes(old, new))
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/user", self._limited("/user", self.handle_user))
        app.router.add_get("/user/{id}", self._limited("/user", self.handle_user))
        app.router.add_post("/chat", self._limited("/chat", self.handle_chat))
        app.router.add_get("/stats", self.handle_stats)
        app.router.add_post("/admin/policy", self.handle_policy)
        app.router.add_get("/healthz", self.handle_healthz)

    # ------------------------------------------------------------------ HTTP

    def _json(
        self, doc: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.responses[status] += 1
        return web.json_response(doc, status=status, headers=headers)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return self._json({"error": message, "code": code}, status)

    def _upstream_error(
        self, e: grpc.aio.AioRpcError | NoInstance | EmptyStream | DeadlineExceeded
    ) -> web.Response:
        if isinstance(e, AllCircuitsOpen):
            self.fallbacks += 1
            return self._json(
                {"error": str(e), "code": "UNAVAILABLE", "fallback": True,
                 "retry_after_ms": round(e.retry_after * 1000)},
                503, _retry_after_header(e.retry_after),
            )
        if isinstance(e, NoInstance):
            return self._error(503, "NO_INSTANCE", str(e))
        if isinstance(e, EmptyStream):
            return self._error(502, "EMPTY_STREAM", str(e))
        if isinstance(e, DeadlineExceeded):
            return self._error(504, "DEADLINE_EXCEEDED", str(e))
        code = e.code()
        return self._error(HTTP_STATUS.get(code, 502), code.name, e.details() or code.name)

    def request_deadline(self, request: web.Request) -> Deadline | None:
        """The deadline a request asks for in its timeout headers (the earliest), None without
        one; ValueError for a malformed one. `deadline_ms` caps it where it is applied."""
        return earliest(*(
            deadline_from_header(request.headers[h]) for h in TIMEOUT_HEADERS
            if h in request.headers
        ))

    def _limited(
        self, route: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def limited(request: web.Request) -> web.StreamResponse:
            wait = self.http_limiter.admit(route)
            if wait is None:
                return await handler(request)
            self.rate_limited[route] += 1
            return self._json(
                {"error": f"rate limit exceeded on {route}", "code": "RESOURCE_EXHAUSTED",
                 "retry_after_ms": math.ceil(wait * 1000)},
                429, _retry_after_header(wait),
            )

        return limited

    async def handle_user(self, request: web.Request) -> web.Response:
        raw = request.match_info.get("id") or request.query.get("id") or "1"
        try:
            uid = int(raw)
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", f"id {raw!r} is not an integer")
        try:
            deadline = self.request_deadline(request)
        except ValueError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        route_key = request.headers.get(ROUTE_KEY_HEADER) or request.query.get("key") or str(uid)
        try:
            with deadline_scope(deadline):
                user = await self.get_user(str(uid), key=route_key.encode())
        except (grpc.aio.AioRpcError, NoInstance, DeadlineExceeded) as e:
            return self._upstream_error(e)
        return self._json(
            {"id": uid, "name": user.name, "age": user.age, "served_by": user.served_by}
        )

    async def handle_chat(self, request: web.Request) -> web.Response:
        try:
            deadline = self.request_deadline(request)
        except ValueError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        try:
            doc = await request.json()
        except ValueError:
            return self._error(400, "INVALID_ARGUMENT", "the body is not JSON")
        content = doc.get("content") if isinstance(doc, dict) else None
        if not isinstance(content, str):
            return self._error(400, "INVALID_ARGUMENT", 'expected {"content": "..."}')
        try:
            with deadline_scope(deadline):
                reply = await self.chat(content)
        except (grpc.aio.AioRpcError, NoInstance, EmptyStream) as e:
            return self._upstream_error(e)
        return self._json(
            {"content": reply.content, "timestamp": reply.timestamp, "served_by": reply.served_by}
        )

    def stats(self) -> dict[str, Any]:
        w = self.watcher
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
            "breakers": self.breakers.to_json(),
            "rate_limited": dict(sorted(self.rate_limited.items())),
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "config": {
                "service": self.settings.config_service,
                "revision": w.revision if w is not None else 0,
                "seen_revision": w.seen_revision if w is not None else 0,
                "last_error": w.last_error if w is not None else None,
                "settings": dataclasses.asdict(self.config),
            },
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
            self.set_policy(name)
        except (ValueError, InvalidArgument) as e:
            return web.json_response(
                {"error": str(e), "code": "INVALID_ARGUMENT", "policies": sorted(POLICIES)},
                status=400,
            )
        return web.json_response({"policy": self.users.policy})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        n = len(self.user_resolver.instances)
        return web.json_response({"user_instances": n}, status=200 if n else 503)
