"""The dashboard's HTTP routes on a node's listener (aiohttp).

    GET /ui/                    the page (static files shipped in this package, no build step)
    GET /ui/<file>              its script and style sheet
    GET /ui/api/cluster         members with leader, term, raft index, health
    GET /ui/api/services        instances with lease TTL remaining
    GET /ui/api/keys?prefix=P&limit=N
    GET /ui/api/config          services' settings
    GET /ui/api/history?service=S
    GET /ui/api/events          text/event-stream: `data: {"revision": N}` after every change

Auth is the JSON gateway's: the data routes read through a `RegistryClient` carrying the
bearer token of the request's `Authorization` header, so the gRPC API's rules decide (no token
with auth on: 401; a role that may not read a range: 403). The static files hold no data and
are served to anyone. An error is `{"error": msg, "code": <grpc code name>}` with the HTTP status
the gateway gives that code. Pages may only load this origin's scripts (a strict CSP).

`add_dashboard_routes` returns `close()`: it ends open event streams and closes the clients;
await it before cleaning up the HTTP runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from raftreg.api.http_gateway import HTTP_STATUS
from raftreg.client.protocol import RegistryClient
from raftreg.client.resumable_watch import ALL_KEYS, WatchBatch
from raftreg.common.status import status_for
from raftreg.dashboard import views
from raftreg.errors import InvalidArgument, RegistryError

# connect(token) -> a client of this node ("" = no token); the dashboard closes it.
Connect = Callable[[str], RegistryClient]

MAX_CLIENTS = 8  # distinct tokens with an open client; the least recently used is closed
EVENT_IDLE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
DISCONNECT_POLL_S = 0.5

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("raftreg.dashboard") / "static"
    return {f.name: (f.read_bytes(), _TYPES[f.name[f.name.rfind("."):]])
            for f in root.iterdir() if f.name[f.name.rfind("."):] in _TYPES}


def _error(err: RegistryError) -> web.Response:
    code, details, _ = status_for(err)
    return web.json_response({"error": details, "code": code.name},
                             status=HTTP_STATUS.get(code, 500), headers=_HEADERS)


def _token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _Dashboard:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._clients: OrderedDict[str, RegistryClient] = OrderedDict()
        self._streams: set[asyncio.Task[Any]] = set()
        self._files = _static_files()
        self._closed = False

    def _client(self, request: web.Request) -> RegistryClient:
        token = _token(request)
        client = self._clients.get(token)
        if client is None:
            client = self._clients[token] = self._connect(token)
            if len(self._clients) > MAX_CLIENTS:
                _, oldest = self._clients.popitem(last=False)
                task = asyncio.ensure_future(oldest.close())
                self._streams.add(task)
                task.add_done_callback(self._streams.discard)
        self._clients.move_to_end(token)
        return client

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        found = self._files.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"no {name} in the dashboard")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, headers=_HEADERS)

    def view(
        self, make: Callable[[RegistryClient, web.Request], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                doc = await make(self._client(request), request)
            except RegistryError as e:
                return _error(e)
            return web.json_response(doc, headers=_HEADERS)

        return handle

    async def events(self, request: web.Request) -> web.StreamResponse:
        """One whole-keyspace watch per open page; see the module docstring."""
        try:
            watch = await self._client(request).watch(ALL_KEYS, range_end=ALL_KEYS)
        except RegistryError as e:
            return _error(e)
        out = web.StreamResponse(headers={**_HEADERS, "Content-Type": "text/event-stream"})
        queue: asyncio.Queue[WatchBatch | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for batch in watch:
                    await queue.put(batch)
            finally:
                await queue.put(None)

        pumping = asyncio.ensure_future(pump())
        self._streams.add(pumping)
        try:
            async with watch:
                await out.prepare(request)
                await out.write(b": watching\n\n")
                idle = 0.0
                while not self._closed:
                    try:
                        batch = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
                    except TimeoutError:
                        if request.transport is None or request.transport.is_closing():
                            break
                        idle += DISCONNECT_POLL_S
                        if idle >= EVENT_IDLE_S:
                            idle = 0.0
                            await out.write(b": idle\n\n")
                        continue
                    if batch is None:  # the watch ended (compacted, or the client closed)
                        break
                    if batch.events:
                        idle = 0.0
                        line = json.dumps({"revision": batch.revision})
                        await out.write(f"data: {line}\n\n".encode())
        except (ConnectionResetError, RegistryError):
            pass  # the page went away, or the watch failed: the page reconnects
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, RegistryError):
                await pumping
            self._streams.discard(pumping)
        return out

    async def close(self) -> None:
        self._closed = True
        for task in list(self._streams):
            task.cancel()
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit():
        raise InvalidArgument("limit must be a number")
    return int(raw)


def add_dashboard_routes(app: web.Application, connect: Connect) -> Callable[[], Awaitable[None]]:
    """Mount `/ui` on `app`; returns `close()` (see the module docstring)."""
    d = _Dashboard(connect)
    app.router.add_get("/ui", _redirect)
    app.router.add_get("/ui/", d.static)
    app.router.add_get("/ui/api/cluster", d.view(lambda c, _: views.cluster_view(c)))
    app.router.add_get("/ui/api/services", d.view(lambda c, _: views.services_view(c)))
    app.router.add_get("/ui/api/keys", d.view(
        lambda c, r: views.keys_view(c, r.query.get("prefix", ""), _limit(r))))
    app.router.add_get("/ui/api/config", d.view(lambda c, _: views.config_view(c)))
    app.router.add_get("/ui/api/history", d.view(
        lambda c, r: views.config_history_view(c, r.query.get("service", ""))))
    app.router.add_get("/ui/api/events", d.events)
    app.router.add_get("/ui/{name}", d.static)
    return d.close


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")
