"""An etcd-style HTTP/JSON gateway (etcd v3.5's grpc-gateway) on a node's HTTP listener.

`add_gateway_routes(app, grpc_target)` mounts the routes below and returns the coroutine function
that closes the gateway. Every request is relayed to the node's OWN gRPC API at `grpc_target`
over one grpc.aio channel, so validation, leader forwarding, errors and semantics are exactly
those of the gRPC API (`protos/raftreg.proto`).

Paths (POST only; the body is the gRPC request message as JSON, an empty body is `{}`):

    /v3/kv/range  /v3/kv/put  /v3/kv/deleterange  /v3/kv/txn  /v3/kv/compaction
    /v3/lease/grant  /v3/lease/revoke  /v3/lease/timetolive  /v3/lease/leases
        (etcd's aliases /v3/kv/lease/revoke, /v3/kv/lease/timetolive, /v3/kv/lease/leases)
    /v3/lease/keepalive      one LeaseKeepAliveRequest -> one `{"result": {...}}` line
    /v3/cluster/member/list  /v3/maintenance/status
    /v3/watch                streaming, see below

JSON is protobuf's canonical mapping: bytes are base64 (standard or URL-safe alphabet, padding
optional, anything else is rejected), int64/uint64 are strings on output (strings or numbers on
input), enums are names on output (names or numbers on input). Output uses the proto field names
(`create_revision`, `mod_revision`, `TTL`, `ID`, ...) and omits zero values, as etcd's gateway
does; input accepts proto names and lowerCamelCase JSON names. An unknown field, a wrong type,
invalid JSON, a duplicated field or a body that is not a JSON object is a 400 and calls nothing.

Unary success: 200 with the response message. Unary failure, and a failure before a stream
produced anything: etcd's gateway error body `{"error": msg, "code": <grpc code>, "message":
msg}` with the HTTP status of `HTTP_STATUS` (grpc-gateway's `HTTPStatusFromCode`).

Streams (`/v3/watch`, `/v3/lease/keepalive`): the body is ONE request message. The response is
`application/json`, chunked, one JSON object per line: `{"result": <response>}` for each gRPC
message, and `{"error": {"grpc_code", "http_code", "message", "http_status"}}` as the last line
if the gRPC stream fails after the first message (grpc-gateway v1's stream format). A watch lasts
until the client disconnects (its gRPC watch is then cancelled, within `DISCONNECT_POLL_S`) or
the gateway closes (a final UNAVAILABLE error line). Unary calls and keepalive get a deadline of
`timeout_s`; the watch stream has none.

The request body is limited to `max_body_bytes` (413 beyond it). An `Authorization` header is
passed on as gRPC metadata `authorization`, so with auth on (raftreg.api.auth) the gateway
enforces the gRPC API's rules: no header -> 401, a refused request -> 403. The gRPC channel
comes from `channel(target, options)` (plaintext by default; TLS when the node serves TLS).

Not supported: etcd's other gateway paths (auth, members add/remove/update/promote, alarms,
defragment, hash, snapshot, move-leader, the `/v3beta` prefix) -> 404 with the error body;
several watch requests in one body; websocket upgrade of streams; `Grpc-Metadata-*` headers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from raftreg.pb import raftreg_pb2 as pb

# channel(target, options): the gateway's gRPC channel to its node.
ChannelFactory = Callable[[str, Sequence[tuple[str, Any]]], grpc.aio.Channel]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 4 << 20
# How often an open watch stream checks whether its HTTP client went away (aiohttp does not
# cancel handlers on disconnect).
DISCONNECT_POLL_S = 0.25

# grpc-gateway v1's HTTPStatusFromCode (what etcd 3.5 answers); codes not listed are 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}

# path -> "Service.Method" of raftreg.v1
UNARY_ROUTES: dict[str, str] = {
    "/v3/kv/range": "KV.Range",
    "/v3/kv/put": "KV.Put",
    "/v3/kv/deleterange": "KV.DeleteRange",
    "/v3/kv/txn": "KV.Txn",
    "/v3/kv/compaction": "KV.Compact",
    "/v3/lease/grant": "Lease.LeaseGrant",
    "/v3/lease/revoke": "Lease.LeaseRevoke",
    "/v3/kv/lease/revoke": "Lease.LeaseRevoke",
    "/v3/lease/timetolive": "Lease.LeaseTimeToLive",
    "/v3/kv/lease/timetolive": "Lease.LeaseTimeToLive",
    "/v3/lease/leases": "Lease.LeaseLeases",
    "/v3/kv/lease/leases": "Lease.LeaseLeases",
    "/v3/cluster/member/list": "Cluster.MemberList",
    "/v3/maintenance/status": "Maintenance.Status",
}
KEEPALIVE_PATH = "/v3/lease/keepalive"
WATCH_PATH = "/v3/watch"

_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")
_STD_FROM_URL = bytes.maketrans(b"-_", b"+/")


class _HttpError(Exception):
    """A failure answered with etcd's gateway error body."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = HTTP_STATUS.get(code, 500) if http_status is None else http_status

    def response(self) -> web.Response:
        body = {"error": self.message, "code": self.code.value[0], "message": self.message}
        return web.json_response(body, status=self.http_status, dumps=_dumps)


@dataclass(frozen=True)
class _Method:
    path: str  # the gRPC method path, "/raftreg.v1.KV/Range"
    request: type[Message]
    response: type[Message]


def _method(name: str) -> _Method:
    service, method = name.split(".")
    d = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return _Method(
        path=f"/{d.containing_service.full_name}/{d.name}",
        request=message_factory.GetMessageClass(d.input_type),
        response=message_factory.GetMessageClass(d.output_type),
    )


def _to_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _line(obj: dict[str, Any]) -> bytes:
    return _dumps(obj).encode() + b"\n"


def _stream_error(e: grpc.aio.AioRpcError | _HttpError) -> tuple[int, bytes]:
    """(HTTP status, grpc-gateway v1 stream error line)."""
    if isinstance(e, _HttpError):
        code, message, status = e.code, e.message, e.http_status
    else:
        code, message = e.code(), e.details() or e.code().name
        status = HTTP_STATUS.get(code, 500)
    err = {"grpc_code": code.value[0], "http_code": status, "message": message,
           "http_status": HTTPStatus(status).phrase}
    return status, _line({"error": err})


def _valid_base64(s: str) -> bool:
    """Go's protojson rule: standard or URL-safe alphabet, with or without correct padding."""
    if not _B64.fullmatch(s):
        return False
    data = s.rstrip("=")
    if len(data) % 4 == 1 or (len(s) != len(data) and len(s) % 4 != 0):
        return False
    try:
        raw = data.encode().translate(_STD_FROM_URL)
        base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        return False
    return True


def _check_bytes_fields(js: Any, desc: Descriptor, where: str) -> None:
    """Reject bytes fields that protobuf's lenient Python decoder would accept but are not
    base64. `js` has already been parsed into `desc` without error, so its shape is valid."""
    if not isinstance(js, dict):
        return
    for name, value in js.items():
        field = next((f for f in desc.fields if name in (f.name, f.json_name)), None)
        if field is None or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if field.type == FieldDescriptor.TYPE_BYTES:
                if isinstance(v, str) and not _valid_base64(v):
                    raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"{where}.{name}: not valid base64: {v[:40]!r}")
            elif field.message_type is not None:
                _check_bytes_fields(v, field.message_type, f"{where}.{name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate JSON field {k!r}")
        out[k] = v
    return out


class _Gateway:
    def __init__(self, target: str, timeout_s: float, max_body_bytes: int,
                 channel: ChannelFactory) -> None:
        self._target = target
        self._new_channel = channel
        self._timeout = timeout_s
        self._max_body = max_body_bytes
        self._channel: grpc.aio.Channel | None = None
        self._streams: set[grpc.aio.Call] = set()
        self._closed = False
        self._keepalive = _method("Lease.LeaseKeepAlive")
        self._watch = _method("Watch.Watch")

    # ------------------------------------------------------------------ plumbing

    def _chan(self) -> grpc.aio.Channel:
        if self._closed:
            raise _HttpError(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        if self._channel is None:  # created on first use, on the serving event loop
            self._channel = self._new_channel(self._target, [
                ("grpc.max_receive_message_length", -1),
                ("grpc.enable_http_proxy", 0),
            ])
        return self._channel

    @staticmethod
    def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
        auth = request.headers.get("Authorization")
        return (("authorization", auth),) if auth is not None else ()

    async def _parse(self, request: web.Request, cls: type[Message]) -> Message:
        """The request message from the body; `_HttpError` (400/413) if it is not one."""
        if request.content_length is not None and request.content_length > self._max_body:
            raise self._too_large()
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > self._max_body:
                raise self._too_large()
        name = cls.DESCRIPTOR.name
        try:
            text = body.decode("utf-8")
            js = json.loads(text, object_pairs_hook=_no_duplicates) if text.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"invalid JSON body for {name}: {e}") from None
        if not isinstance(js, dict):
            raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the body must be a JSON object ({name})")
        msg = cls()
        try:
            json_format.ParseDict(js, msg, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            detail = str(e).split("\n")[0]
            raise _HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"invalid {name}: {detail}") from None
        _check_bytes_fields(js, cast(Descriptor, cls.DESCRIPTOR), name)
        return msg

    def _too_large(self) -> _HttpError:
        return _HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"request body larger than {self._max_body} bytes", 413)

    # ------------------------------------------------------------------ handlers

    def unary(self, method: _Method) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                req = await self._parse(request, method.request)
                call = self._chan().unary_unary(
                    method.path,
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                )
                resp = await call(req, timeout=self._timeout, metadata=self._metadata(request))
            except _HttpError as e:
                return e.response()
            except grpc.aio.AioRpcError as e:
                return _HttpError(e.code(), e.details() or e.code().name).response()
            return web.json_response(_to_json(resp), dumps=_dumps)

        return handle

    def _stream_call(self, method: _Method, request: web.Request,
                     timeout: float | None) -> grpc.aio.StreamStreamCall[Any, Any]:
        call: grpc.aio.StreamStreamCall[Any, Any] = self._chan().stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )(None, timeout=timeout, metadata=self._metadata(request))
        return call

    async def keepalive(self, request: web.Request) -> web.StreamResponse:
        """etcd's gateway: the one request, then the stream's first answer as a result line."""
        method = self._keepalive
        try:
            req = await self._parse(request, method.request)
            call = self._stream_call(method, request, self._timeout)
        except _HttpError as e:
            return e.response()
        try:
            await call.write(req)
            await call.done_writing()
            resp = await call.read()
            if not isinstance(resp, Message):  # end of stream
                raise _HttpError(grpc.StatusCode.UNAVAILABLE,
                                 "the keepalive stream ended without an answer")
        except (grpc.aio.AioRpcError, _HttpError) as e:
            status, line = _stream_error(e)
            return web.Response(status=status, body=line, content_type="application/json")
        finally:
            call.cancel()
        return web.Response(body=_line({"result": _to_json(resp)}),
                            content_type="application/json")

    async def watch(self, request: web.Request) -> web.StreamResponse:
        method = self._watch
        try:
            req = await self._parse(request, method.request)
            call = self._stream_call(method, request, None)
        except _HttpError as e:
            return e.response()
        self._streams.add(call)
        gone = asyncio.Event()  # set when the HTTP client disconnected
        poller = asyncio.create_task(self._cancel_on_disconnect(request, call, gone))
        out: web.StreamResponse | None = None
        error: grpc.aio.AioRpcError | _HttpError | None = None
        try:
            await call.write(req)
            while isinstance(msg := await call.read(), Message):  # until the end of stream
                if out is None:
                    out = await self._open_stream(request)
                await out.write(_line({"result": _to_json(msg)}))
        except grpc.aio.AioRpcError as e:
            error = e
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Our call was cancelled: by the poller (client gone) or by close().
            if not gone.is_set():
                error = _HttpError(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        except ConnectionError:  # the client went away while we wrote to it
            gone.set()
        finally:
            poller.cancel()
            call.cancel()
            self._streams.discard(call)
        if gone.is_set():  # nothing more reaches the client; aiohttp needs a response object
            return out if out is not None else web.Response(status=499)
        with contextlib.suppress(ConnectionError):
            if error is not None:
                status, line = _stream_error(error)
                if out is None:
                    return web.Response(status=status, body=line, content_type="application/json")
                await out.write(line)
            if out is None:
                out = await self._open_stream(request)
            await out.write_eof()
        return out if out is not None else web.Response(status=499)

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/json"})
        out.enable_chunked_encoding()
        await out.prepare(request)
        return out

    @staticmethod
    async def _cancel_on_disconnect(request: web.Request, call: grpc.aio.Call,
                                    gone: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            transport = request.transport
            if transport is None or transport.is_closing():
                gone.set()
                call.cancel()
                return

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        known = set(UNARY_ROUTES) | {KEEPALIVE_PATH, WATCH_PATH}
        if request.path in known:
            return _HttpError(grpc.StatusCode.UNIMPLEMENTED,
                              f"method {request.method} not allowed on {request.path}; use POST",
                              405).response()
        return _HttpError(grpc.StatusCode.NOT_FOUND,
                          f"raftreg's gateway does not serve {request.path}").response()

    async def close(self) -> None:
        """Ends open watch streams (with an UNAVAILABLE error line) and closes the channel."""
        self._closed = True
        for call in list(self._streams):
            call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


def _insecure(target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=list(options))


def add_gateway_routes(
    app: web.Application,
    grpc_target: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    channel: ChannelFactory = _insecure,
) -> Callable[[], Awaitable[None]]:
    """Mount the `/v3/...` gateway on `app`, relaying to the gRPC API at `grpc_target`.

    Returns `close()`: await it before cleaning up the HTTP runner, so open watch streams end
    instead of holding the runner's shutdown."""
    gw = _Gateway(grpc_target, timeout_s, max_body_bytes, channel)
    for path, name in UNARY_ROUTES.items():
        app.router.add_post(path, gw.unary(_method(name)))
    app.router.add_post(KEEPALIVE_PATH, gw.keepalive)
    app.router.add_post(WATCH_PATH, gw.watch)
    app.router.add_route("*", "/v3/{tail:.*}", gw.not_found)
    return gw.close
