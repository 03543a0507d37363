"""Client-side transport security: TLS (optionally with a client certificate) and a bearer token.

`ClientSecurity` is what a pooled client (`GrpcRegistryClient`, `EtcdRegistryClient`) needs to
open its channels: channel credentials, and interceptors that add `authorization: Bearer
<token>` to every call, unary and streaming (metadata rather than call credentials, because
gRPC sends call credentials only over TLS and a token without TLS is a supported, if unwise,
setup).

Contracts:
- TLS is on when asked for (`tls=True`), when any of the CA, certificate or key files is given,
  or when an endpoint is written `https://...`. Without a CA file the system trust store
  verifies the server. A client certificate needs both `cert_file` and `key_file`.
- Explicit arguments win over the environment (`ClientSecurity.resolve`): `RAFTREG_CACERT`,
  `RAFTREG_CERT`, `RAFTREG_KEY`, `RAFTREG_TOKEN`. The client classes themselves never read the
  environment; `raftreg.client.connect()` and the CLI do, through `resolve`.
- Files are read (and the PEM checked) when the credentials are built, so a wrong path or a
  file that is not PEM is an `InvalidArgument` before anything is sent.
- `diagnose(endpoint)` explains why a channel could not connect when the reason is a TLS
  mismatch (server wants TLS, untrusted server certificate, client certificate required or
  refused); None when it finds nothing to say (e.g. the endpoint is simply down).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from raftreg.config import split_hostport
from raftreg.errors import InvalidArgument

if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor
# What the grpc.aio channel constructors take as interceptors (grpc-stubs leave it a
# placeholder type).
ClientInterceptor = Any

ENV_TOKEN = "RAFTREG_TOKEN"
ENV_CACERT = "RAFTREG_CACERT"
ENV_CERT = "RAFTREG_CERT"
ENV_KEY = "RAFTREG_KEY"

AUTH_HEADER = "authorization"

# How long `diagnose` may take: the TLS handshake, then the wait for a late refusal (TLS 1.3
# servers refuse a client certificate after the handshake, on the first read).
DIAGNOSE_TIMEOUT_S = 1.0
_LATE_REFUSAL_WAIT_S = 0.3


def wants_tls(endpoints: Sequence[str] | str | None) -> bool:
    """Whether any endpoint in `endpoints` (a list, or comma-separated) is written https://."""
    if endpoints is None:
        return False
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    return any(
        part.strip().lower().startswith("https://") for item in items for part in item.split(",")
    )


def endpoints_want_tls(
    endpoints: Sequence[str] | str | None,
    *,
    config_path: str | Path = "cluster.toml",
    env: Mapping[str, str] | None = None,
) -> bool:
    """`wants_tls` of the endpoints a client will use, from the sources of
    `raftreg.client.backend_choice.select_backend` in its order: `endpoints`, then
    RAFTREG_ENDPOINTS in `env`, then the [registry] table of `config_path`."""
    if endpoints is not None:
        return wants_tls(endpoints)
    from raftreg.client.backend_choice import ENV_ENDPOINTS, registry_table

    if env is not None and env.get(ENV_ENDPOINTS, "").strip():
        return wants_tls(env[ENV_ENDPOINTS])
    spec = registry_table(config_path).get("endpoints")
    return isinstance(spec, str | list) and wants_tls([str(x) for x in spec] if
                                                        isinstance(spec, list) else spec)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{what} {path}: {e.strerror or e}") from None


def _check_pem(data: bytes, path: str, what: str, marker: bytes) -> bytes:
    if b"-----BEGIN " not in data or marker not in data:
        raise InvalidArgument(f"{what} {path} is not a PEM file")
    return data


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """TLS and token settings of one client (see the module docstring). The token is never
    shown by `repr`."""

    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidArgument("a client certificate needs both a certificate and a key file")
        if self.token and (
            not self.token.isascii()
            or not self.token.isprintable()
            or any(c.isspace() for c in self.token)
        ):
            raise InvalidArgument("the token must be printable ASCII without spaces")
        if (self.ca_file or self.cert_file) and not self.tls:
            object.__setattr__(self, "tls", True)

    @classmethod
    def resolve(
        cls,
        *,
        tls: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        token: str | None = None,
        endpoints: Sequence[str] | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientSecurity:
        """Explicit arguments first, then `env` (RAFTREG_CACERT, RAFTREG_CERT, RAFTREG_KEY,
        RAFTREG_TOKEN; pass None for no environment). TLS as in the module docstring."""
        e: Mapping[str, str] = env if env is not None else {}

        def pick(value: str | None, name: str) -> str:
            return value if value is not None else e.get(name, "").strip()

        ca = pick(ca_file, ENV_CACERT)
        cert = pick(cert_file, ENV_CERT)
        key = pick(key_file, ENV_KEY)
        return cls(
            tls=bool(tls) or wants_tls(endpoints) or bool(ca or cert or key),
            ca_file=ca,
            cert_file=cert,
            key_file=key,
            token=pick(token, ENV_TOKEN),
        )

    # --- channel pieces --------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """SSL channel credentials when TLS is on (files read now), else None."""
        if not self.tls:
            return None
        ca = (
            _check_pem(_read(self.ca_file, "CA file"), self.ca_file, "CA file", b"CERTIFICATE")
            if self.ca_file
            else None
        )
        cert = key = None
        if self.cert_file:
            cert = _check_pem(_read(self.cert_file, "certificate file"), self.cert_file,
                              "certificate file", b"CERTIFICATE")
            key = _check_pem(_read(self.key_file, "key file"), self.key_file, "key file",
                             b"PRIVATE KEY")
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries (the bearer token, if any)."""
        return ((AUTH_HEADER, f"Bearer {self.token}"),) if self.token else ()

    def interceptors(self) -> list[ClientInterceptor]:
        """Interceptors adding `metadata()` to every call ([] without a token)."""
        md = self.metadata()
        return metadata_interceptors(md) if md else []

    def channel(
        self, target: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """A grpc.aio channel to `target` with these settings (on the running loop)."""
        creds = self.channel_credentials()
        icpt = self.interceptors() or None
        if creds is None:
            return grpc.aio.insecure_channel(target, options=list(options), interceptors=icpt)
        return grpc.aio.secure_channel(target, creds, options=list(options), interceptors=icpt)

    # --- diagnosis -------------------------------------------------------------------------

    async def diagnose(self, endpoint: str, timeout: float = DIAGNOSE_TIMEOUT_S) -> str | None:
        """Why a channel to `endpoint` may not connect, if it is a TLS mismatch; else None."""
        try:
            host, port = split_hostport(endpoint)
        except InvalidArgument:
            return None
        try:
            ctx = self._probe_context()
        except (OSError, ssl.SSLError, ValueError):
            return None  # unreadable files are reported by channel_credentials
        try:
            return await asyncio.wait_for(self._probe(endpoint, host, port, ctx), timeout)
        except TimeoutError:
            return None

    def _probe_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.set_alpn_protocols(["h2"])  # gRPC servers refuse a handshake without it
        if self.tls:
            if self.ca_file:
                ctx.load_verify_locations(cafile=self.ca_file)
            else:
                ctx.load_default_certs()
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        else:  # only asks "does this endpoint speak TLS at all?"
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _probe(self, endpoint: str, host: str, port: int, ctx: ssl.SSLContext) -> str | None:
        hint_ca = "give the CA that signed it (--cacert or RAFTREG_CACERT)"
        hint_cert = "give a client certificate (--cert/--key or RAFTREG_CERT/RAFTREG_KEY)"
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if self.tls else None
            )
        except ssl.SSLCertVerificationError as e:
            return f"TLS: the server certificate of {endpoint} is not trusted " \
                   f"({e.verify_message}); {hint_ca}"
        except (ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError) as e:
            if not self.tls:
                return None  # a plain server answering a TLS hello: not a TLS problem
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
                return f"{endpoint} requires a client certificate (mutual TLS); {hint_cert}"
            return f"TLS handshake with {endpoint} failed ({reason}); is it a TLS endpoint?"
        except OSError:
            return None  # down or unreachable: nothing TLS-specific to say
        try:
            if not self.tls:
                return (f"{endpoint} requires TLS: use an https:// endpoint or give the CA "
                        f"(--cacert or RAFTREG_CACERT)")
            # TLS 1.3: a client certificate is refused after the handshake, on the first read.
            try:
                data = await asyncio.wait_for(reader.read(1), _LATE_REFUSAL_WAIT_S)
            except TimeoutError:
                return None
            except (ssl.SSLError, ConnectionResetError) as e:
                reason = getattr(e, "reason", None) or str(e)
                if "CERTIFICATE_REQUIRED" in reason:
                    return f"{endpoint} requires a client certificate (mutual TLS); {hint_cert}"
                return f"{endpoint} refused the client certificate ({reason})"
            if data:
                return None
            if not self.cert_file:
                return (f"{endpoint} closed the TLS connection after the handshake: it probably "
                        f"requires a client certificate (mutual TLS); {hint_cert}")
            return (f"{endpoint} closed the TLS connection after the handshake: it probably "
                    f"refused the client certificate (not signed by its client CA?)")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# --- metadata interceptors ---------------------------------------------------------------------


def _with_metadata(details: grpc.aio.ClientCallDetails,
                   extra: Iterable[tuple[str, str]]) -> grpc.aio.ClientCallDetails:
    """`details` with `extra` added (keys already present are left as they are)."""
    md = grpc.aio.Metadata()
    present: set[str] = set()
    for k, v in details.metadata or ():
        md.add(k, v)
        present.add(k)
    for k, v in extra:
        if k not in present:
            md.add(k, v)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, md, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(_UnaryUnaryBase):
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._md), request)


class _UnaryStream(_UnaryStreamBase):
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._md), request)


class _StreamUnary(_StreamUnaryBase):
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._md),
                                  request_iterator)


class _StreamStream(_StreamStreamBase):
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._md),
                                  request_iterator)


def metadata_interceptors(md: tuple[tuple[str, str], ...]) -> list[ClientInterceptor]:
    """One interceptor per call kind, each adding `md` to every call."""
    return [_UnaryUnary(md), _UnaryStream(md), _StreamUnary(md), _StreamStream(md)]
