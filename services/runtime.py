"""What every example service process shares: settings from the command line, the registry
client, a grpc.aio server with grpc.health.v1, an optional aiohttp server, the registration
of the instance, the READY line and an orderly shutdown.

Contracts:
- Settings are explicit (`ServiceSettings`, built from argv by `parse_settings`); nothing is
  read from module globals. The registry client comes from `raftreg.client.connect`
  (`--registry` endpoints or URL, else `--config` / RAFTREG_BACKEND / RAFTREG_ENDPOINTS), so a
  service depends only on the `RegistryClient` protocol and runs unchanged on raftreg or etcd.
- Start order: bind and start the servers, run the `on_start` hooks, register the instance
  (`Registration`, under a lease of `--ttl` seconds), then print exactly one line on stdout,
  `READY {"service": ..., "id": ..., "grpc": "host:port", "http": "host:port" | null, "pid": ...}`.
  Nothing else is written to stdout; logs go to stderr.
- The gRPC server runs the interceptor chain `server_interceptors(settings)` builds (reference
  document 2.5; `raftreg.resilience.server_interceptors`), outermost first: logging (one record
  per call, structured `rpc_*` fields; calls that end OK at `--rpc-log-level`, the others at
  WARNING), deadline (the caller's deadline becomes the current deadline while the method
  runs, so `raftreg.resilience.current_deadline()` sees it; a call whose deadline passed on
  arrival is not run), auth (only with `--token` / RAFTREG_SERVICE_TOKEN: a call without
  `authorization: Bearer <one of the tokens>` is answered UNAUTHENTICATED without running), rate
  limit (only with `--rate-limit RPS`: per gRPC method, above RPS (burst `--rate-burst`) the
  call is answered RESOURCE_EXHAUSTED without running; calls auth refuses use no budget).
  grpc.health.v1 is exempt from auth and rate limit. Refusals carry the not-executed marker,
  so clients may retry them.
- Upstream channels (`client_channel`, used by the gateway) run the client chain: logging,
  deadline propagation (the current deadline minus a small margin bounds every call), and a
  bearer token when one is configured; `connect_timeout_s` is gRPC's minimum connect timeout.
- grpc.health.v1 reports SERVING (for "" and every name in `health_services`) while the
  instance is registered, NOT_SERVING otherwise, and NOT_SERVING for good once stopping.
- Stop order (SIGTERM / SIGINT, or `request_stop()`): health NOT_SERVING, deregister (the key
  is deleted at once, not at lease expiry), stop the HTTP and gRPC servers with a grace of
  `--grace` seconds, run the `on_stop` hooks (last added first), close the registry client.
  A signal during startup aborts it and runs the same stop sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import grpc
import grpc.aio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftreg.client import RegistryClient, connect
from raftreg.discovery import Instance, Registration
from raftreg.errors import RegistryError
from raftreg.logfmt import FORMATS as LOG_FORMATS
from raftreg.logfmt import LogFormat, setup_logging
from raftreg.resilience import (
    DEFAULT_AUTH_EXEMPT,
    ClientAuthInterceptor,
    ClientDeadlineInterceptor,
    ClientLoggingInterceptor,
    RateLimit,
    RateLimiter,
    ServerAuthInterceptor,
    ServerDeadlineInterceptor,
    ServerLoggingInterceptor,
    ServerRateLimitInterceptor,
    client_chain,
)

log = logging.getLogger("services.runtime")

HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

READY_PREFIX = "READY "
Hook = Callable[[], Awaitable[None]]
# The deployment's shared service token: the tokens a service accepts (comma-separated) when
# no --token is given, and the token the gateway sends upstream when no --upstream-token is.
TOKEN_ENV = "RAFTREG_SERVICE_TOKEN"
RPC_LOG = "services.rpc"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """One service process's settings. `port` / `http_port` 0 pick a free port. `registry` is
    what `connect()` takes (endpoints or an "etcd://..." / "raftreg://..." URL); None selects
    the backend from `config` and the environment."""

    service: str
    id: str
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    weight: int = 1
    zone: str = ""
    version: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl: int = 10
    registry: str | None = None
    config: str = "cluster.toml"
    register_timeout: float = 15.0
    grace: float = 1.0
    log_level: str = "INFO"
    log_format: LogFormat = "text"  # raftreg.logfmt: the same fields as the nodes' logs
    uvloop: bool = True  # run on uvloop when installed (as the registry nodes do)
    # the gRPC server's interceptor chain (module docstring): accepted bearer tokens (none: no
    # auth), requests per second per method (None: unlimited) and the bucket size (None: max(1,
    # rate_limit)), the log level of calls that end OK
    tokens: tuple[str, ...] = ()
    rate_limit: float | None = None
    rate_burst: float | None = None
    rpc_log_level: str = "DEBUG"


def _metadata_item(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return k, v


def service_parser(service: str, description: str) -> argparse.ArgumentParser:
    """The arguments every service takes; a service adds its own before parsing."""
    p = argparse.ArgumentParser(prog=f"python -m services.{service}", description=description)
    p.add_argument("--service", default=service,
                   help=f"service name to register under (default {service})")
    p.add_argument("--id", default=None, help="instance id (default <service>-<pid>)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind and advertise")
    p.add_argument("--port", type=int, default=0, help="gRPC port (0: a free port)")
    p.add_argument("--http-port", type=int, default=0, help="HTTP port (0: a free port)")
    p.add_argument("--weight", type=int, default=1, help="weight for weighted balancing")
    p.add_argument("--zone", default="")
    p.add_argument("--version", default="")
    p.add_argument("--meta", type=_metadata_item, action="append", default=[],
                   metavar="KEY=VALUE", help="instance metadata (repeatable)")
    p.add_argument("--ttl", type=int, default=10, help="registration lease TTL in seconds")
    p.add_argument("--registry", default=None,
                   help="registry endpoints or URL (etcd://h:p,... or raftreg://h:p,...); "
                        "default: from --config and RAFTREG_BACKEND / RAFTREG_ENDPOINTS")
    p.add_argument("--config", default="cluster.toml", help="cluster file (default cluster.toml)")
    p.add_argument("--register-timeout", type=float, default=15.0,
                   help="give up (exit 1) if not registered within this many seconds")
    p.add_argument("--grace", type=float, default=1.0,
                   help="seconds in-flight requests get to finish on shutdown")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                   help="run on the standard asyncio event loop instead of uvloop")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="stderr log lines: text or JSON objects (the registry nodes' fields)")
    p.add_argument("--token", action="append", default=[], metavar="TOKEN",
                   help="require 'authorization: Bearer TOKEN' on this service's gRPC calls "
                        f"(repeatable: any of them; default: ${TOKEN_ENV}, comma-separated; "
                        "none: no auth); grpc.health.v1 is exempt")
    p.add_argument("--rate-limit", type=float, default=None, metavar="RPS",
                   help="answer RESOURCE_EXHAUSTED above RPS calls per second per gRPC method")
    p.add_argument("--rate-burst", type=float, default=None, metavar="N",
                   help="calls allowed at once above the rate (default max(1, RPS))")
    p.add_argument("--rpc-log-level", default="DEBUG",
                   help="log level of the one line per gRPC call that ends OK (others: WARNING)")
    return p


def tokens_from(given: Sequence[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """The non-empty tokens given, else those of $RAFTREG_SERVICE_TOKEN (comma-separated)."""
    tokens = [t.strip() for t in given if t.strip()]
    if not tokens:
        tokens = [t.strip() for t in environ.get(TOKEN_ENV, "").split(",") if t.strip()]
    return tuple(tokens)


def settings_from_args(
    ns: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """The settings of `service_parser`'s arguments; `environ` (default: this process's
    environment) supplies the tokens when no --token is given."""
    service: str = ns.service
    return ServiceSettings(
        service=service,
        id=ns.id or f"{service}-{os.getpid()}",
        host=ns.host,
        port=ns.port,
        http_port=ns.http_port,
        weight=ns.weight,
        zone=ns.zone,
        version=ns.version,
        metadata=dict(ns.meta),
        ttl=ns.ttl,
        registry=ns.registry,
        config=ns.config,
        register_timeout=ns.register_timeout,
        grace=ns.grace,
        log_level=ns.log_level,
        log_format=ns.log_format,
        uvloop=ns.uvloop,
        tokens=tokens_from(ns.token, os.environ if environ is None else environ),
        rate_limit=ns.rate_limit,
        rate_burst=ns.rate_burst,
        rpc_log_level=ns.rpc_log_level,
    )


def _level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {name!r}")
    return level


def server_interceptors(settings: ServiceSettings) -> list[Any]:
    """The gRPC server's interceptor chain (module docstring), outermost first. Raises
    ValueError for an invalid rate limit or log level."""
    chain: list[Any] = [
        ServerLoggingInterceptor(
            logging.getLogger(RPC_LOG), level=_level(settings.rpc_log_level)
        ),
        ServerDeadlineInterceptor(),
    ]
    auth = None
    if settings.tokens:
        auth = ServerAuthInterceptor(settings.tokens, exempt=DEFAULT_AUTH_EXEMPT)
        chain.append(auth)
    if settings.rate_limit is not None:
        burst = settings.rate_burst or max(1.0, settings.rate_limit)
        limiter = RateLimiter(
            RateLimit(settings.rate_limit, burst),
            {name: None for name in DEFAULT_AUTH_EXEMPT},
        )
        # after auth: a token is spent only by calls auth let through
        chain.append(ServerRateLimitInterceptor(limiter))
    return chain


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How a service opens a channel to another service's instance: the bearer token to send
    (None: none), gRPC's minimum connect timeout, the margin taken off the propagated deadline
    (so the callee gives up, and answers, before the caller), and the log level of calls that
    end OK."""

    token: str | None = None
    connect_timeout_s: float = 2.0
    deadline_margin_s: float = 0.005
    rpc_log_level: str = "DEBUG"

    def __post_init__(self) -> None:
        if not self.connect_timeout_s > 0:
            raise ValueError("connect_timeout_s must be > 0")
        if not self.deadline_margin_s >= 0:
            raise ValueError("deadline_margin_s must be >= 0")
        _level(self.rpc_log_level)


def client_channel(address: str, settings: ChannelSettings) -> grpc.aio.Channel:
    """An insecure channel to `address` through the client interceptor chain (module
    docstring): logging, deadline propagation, then the bearer token (if any)."""
    chain: list[Any] = [
        ClientLoggingInterceptor(
            logging.getLogger(RPC_LOG), target=address, level=_level(settings.rpc_log_level)
        ),
        ClientDeadlineInterceptor(margin_s=settings.deadline_margin_s),
    ]
    if settings.token:
        chain.append(ClientAuthInterceptor(settings.token))
    # grpc.min_reconnect_backoff_ms is gRPC core's MIN_CONNECT_TIMEOUT: how long one connection
    # attempt may take (a call's own deadline still bounds its wait)
    connect_ms = max(100, round(settings.connect_timeout_s * 1000))
    options = [("grpc.min_reconnect_backoff_ms", connect_ms)]
    return grpc.aio.insecure_channel(address, options=options, interceptors=client_chain(*chain))


def configure_logging(settings: ServiceSettings) -> None:
    setup_logging(f"service={settings.service} id={settings.id}", settings.log_format,
                  _level(settings.log_level))


def parse_ready(line: str) -> dict[str, Any] | None:
    """The JSON object of a READY line, or None if `line` is not one."""
    if not line.startswith(READY_PREFIX):
        return None
    doc = json.loads(line[len(READY_PREFIX):])
    return doc if isinstance(doc, dict) else None


class ServiceRuntime:
    """One service process's servers, registration and lifecycle; see the module docstring.

    Construct inside the running event loop, add servicers to `grpc_server` and routes to
    `http_app` (present when `http=True`), then `run()` (or `start()` / `stop()`). The
    registered address is the gRPC one, or the HTTP one with `register="http"`. `client`
    defaults to `connect(settings.registry, config_path=settings.config)` and is then closed
    by `stop()`."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        http: bool = False,
        register: Literal["grpc", "http"] = "grpc",
        health_services: Sequence[str] = (),
        client: RegistryClient | None = None,
        out: TextIO | None = None,
    ) -> None:
        if register == "http" and not http:
            raise ValueError("register='http' needs http=True")
        self.settings = settings
        self._own_client = client is None
        self.client: RegistryClient = (
            connect(settings.registry, config_path=settings.config) if client is None else client
        )
        self.grpc_server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0)], interceptors=server_interceptors(settings)
        )
        self.health: Any = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self._health_services = ("", *health_services)
        self.http_app: web.Application | None = web.Application() if http else None
        self._register = register
        self._out = out or sys.stdout
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._http_runner: web.AppRunner | None = None
        self._grpc_started = False
        self.grpc_address = ""
        self.http_address: str | None = None
        self.registration: Registration | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._stopped = False

    def on_start(self, hook: Hook) -> None:
        """Run `hook` after the servers started and before the instance is registered."""
        self._on_start.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Run `hook` after deregistration and after the servers stopped."""
        self._on_stop.append(hook)

    def request_stop(self) -> None:
        self._stop_requested.set()

    @property
    def instance(self) -> Instance:
        s = self.settings
        address = self.grpc_address if self._register == "grpc" else self.http_address
        md = dict(s.metadata)
        md["grpc"] = self.grpc_address
        if self.http_address is not None:
            md["http"] = self.http_address
        return Instance(
            service=s.service, id=s.id, address=address or "", weight=s.weight, zone=s.zone,
            version=s.version, metadata=md,
        )

    def ready_info(self) -> dict[str, Any]:
        return {
            "service": self.settings.service,
            "id": self.settings.id,
            "grpc": self.grpc_address,
            "http": self.http_address,
            "pid": os.getpid(),
        }

    async def start(self) -> None:
        """Servers, `on_start` hooks, registration, READY line. Raises `RegistryError` when
        the instance is not registered within `register_timeout`, `OSError` on a bind failure."""
        s = self.settings
        for name in self._health_services:
            await self.health.set(name, _NOT_SERVING)
        if self.http_app is not None:
            sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((s.host, s.http_port))
            except OSError:
                sock.close()
                raise
            self._http_runner = web.AppRunner(
                self.http_app, access_log=None, shutdown_timeout=s.grace
            )
            await self._http_runner.setup()
            await web.SockSite(self._http_runner, sock).start()
            self.http_address = f"{s.host}:{sock.getsockname()[1]}"
        port = self.grpc_server.add_insecure_port(f"{s.host}:{s.port}")
        if port == 0:
            raise OSError(f"cannot bind the gRPC address {s.host}:{s.port}")
        self.grpc_address = f"{s.host}:{port}"
        await self.grpc_server.start()
        self._grpc_started = True
        for hook in self._on_start:
            await hook()
        self.registration = Registration(self.client, self.instance, ttl=s.ttl)
        await self.registration.start(wait=True, timeout=s.register_timeout)
        self._health_task = asyncio.get_running_loop().create_task(self._report_health())
        log.info("ready: grpc %s, http %s", self.grpc_address, self.http_address)
        print(READY_PREFIX + json.dumps(self.ready_info(), separators=(",", ":")),
              file=self._out, flush=True)

    async def stop(self) -> None:
        """The stop sequence of the module docstring. Idempotent; safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.registration is not None:
            was_registered = self.registration.registered
            await self.registration.stop()
            if was_registered:
                log.info("deregistered %s", self.registration.key)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self._grpc_started:
            await self.grpc_server.stop(self.settings.grace)
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        if self._own_client:
            await self.client.close()

    async def run(self) -> int:
        """Start, serve until SIGTERM / SIGINT (or `request_stop()`), stop. The exit code:
        0, or 1 when startup failed."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested.set)
        code = 0
        try:
            starting = loop.create_task(self.start())
            stopping = loop.create_task(self._stop_requested.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested during startup")
                starting.cancel()
            try:
                await starting
            except asyncio.CancelledError:
                pass
            except (RegistryError, OSError) as e:
                log.error("startup failed: %s", e)
                code = 1
            if code == 0:
                await stopping
            stopping.cancel()
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return code

    async def _report_health(self) -> None:
        last: int | None = None
        reg = self.registration
        while reg is not None:
            status = _SERVING if reg.registered else _NOT_SERVING
            if status != last:
                for name in self._health_services:
                    await self.health.set(name, status)
                last = status
            await asyncio.sleep(0.2)


def run_service(
    settings: ServiceSettings,
    build: Callable[[ServiceSettings], ServiceRuntime],
) -> int:
    """Configure logging, then run the runtime `build(settings)` makes (called inside the
    event loop) until SIGTERM / SIGINT; returns the process exit code."""

    async def main() -> int:
        try:
            runtime = build(settings)
        except (RegistryError, ValueError) as e:
            log.error("%s", e)
            return 1
        return await runtime.run()

    configure_logging(settings)
    if settings.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run(main())
    return asyncio.run(main())
