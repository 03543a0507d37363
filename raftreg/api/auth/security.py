"""A node's client-API security (`NodeSecurity`): TLS credentials, the auth policy, and the
channels for node-internal calls through the client API (forwarding to the leader, the HTTP
gateway to its own node).

Everything is off unless configured (`[cluster]` settings `tls_cert_file`/`tls_key_file`,
`tls_client_ca_file`, `tls_ca_file`, `auth_file`; see `raftreg.config.ClusterSettings`).
`NodeSecurity.load(cfg)` reads and checks every file once, at node start.

Node-internal calls through the client API:
- A follower forwards lease calls (and any other call over `LeaderLink`) to the leader over
  `NodeSecurity.leader_channel`: TLS when on (verified with `tls_ca_file`; with mutual TLS the
  node presents its server certificate). Unary forwards carry the CALLER's `authorization`
  (taken from the call being served, `_CALLER_AUTH`), so the leader checks the same user
  again. The one shared LeaseKeepAlive forwarding stream serves many callers and carries the
  cluster-internal credential instead: `internal_token(secret)`, an HMAC-SHA256 of the cluster
  secret. It authenticates as the principal "(cluster)" which may ONLY call LeaseKeepAlive
  (its callers were authorized by the follower). Anyone holding the cluster secret can
  already control the raft port, so deriving it from the secret grants nothing new.
- The HTTP gateway calls its own node over `NodeSecurity.gateway_channel` (TLS when on, no
  credential of its own): it forwards the HTTP `Authorization` header, so the gateway
  enforces exactly the gRPC rules. Its HTTP listener has no TLS; with mutual TLS required and
  auth off it would be an open door around the client-certificate check, so it is then not
  served (`NodeSecurity.gateway_allowed`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raftreg.api.auth.authfile import load_auth_file
from raftreg.api.auth.interceptor import _CALLER_AUTH, AuthInterceptor
from raftreg.api.auth.policy import AUTH_HEADER, AuthPolicy, internal_token
from raftreg.api.auth.rules import LEASE_KEEPALIVE
from raftreg.config import ClusterConfig
from raftreg.errors import InvalidArgument
from raftreg.pb import raftreg_pb2 as pb

if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor
# What the grpc.aio channel constructors take as interceptors (a placeholder in grpc-stubs).
ClientInterceptor = Any


# --- forwarding to the leader ------------------------------------------------------------------


def _add(details: grpc.aio.ClientCallDetails, value: str | None) -> grpc.aio.ClientCallDetails:
    pairs = [(k, v) for k, v in (details.metadata or ()) if k != AUTH_HEADER]
    md = grpc.aio.Metadata(*pairs)
    if value is not None:
        md.add(AUTH_HEADER, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, md, details.credentials, details.wait_for_ready
    )


class _ForwardUnary(_UnaryUnaryBase):
    """Unary forwards carry the caller's authorization."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(_add(client_call_details, _CALLER_AUTH.get()), request)


class _ForwardStream(_StreamStreamBase):
    """The shared keepalive stream carries the internal credential; any other stream the
    caller's authorization."""

    def __init__(self, internal: str) -> None:
        self._internal = internal  # the whole metadata value, "Bearer <internal token>"

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        value = self._internal if name == LEASE_KEEPALIVE else _CALLER_AUTH.get()
        return await continuation(_add(client_call_details, value), request_iterator)


# --- the node's security settings --------------------------------------------------------------


def _read_file(cfg: ClusterConfig, name: str, setting: str) -> bytes:
    path = cfg.file(name)
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"[cluster] {setting} {path}: {e.strerror or e}") from None


def _certs(data: bytes, cfg: ClusterConfig, name: str, setting: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise InvalidArgument(f"[cluster] {setting} {cfg.file(name)}: no PEM certificate")
    return certs


@dataclass(frozen=True)
class NodeSecurity:
    """A node's client-API security, loaded and checked at start (`load`)."""

    server_credentials: grpc.ServerCredentials | None = None  # None: plaintext
    channel_credentials: grpc.ChannelCredentials | None = None  # for node-internal calls
    policy: AuthPolicy | None = None  # None: auth off
    internal: str = field(default="", repr=False)  # the internal credential ("" = auth off)
    mutual_tls: bool = False

    @classmethod
    def load(cls, cfg: ClusterConfig) -> NodeSecurity:
        """Reads every configured file; `InvalidArgument` naming the setting and the file
        for anything missing or wrong (the node then does not start)."""
        s = cfg.settings
        server_creds = channel_creds = None
        if s.tls:
            cert = _read_file(cfg, s.tls_cert_file, "tls_cert_file")
            key = _read_file(cfg, s.tls_key_file, "tls_key_file")
            leaf = _certs(cert, cfg, s.tls_cert_file, "tls_cert_file")[0]
            try:
                private = serialization.load_pem_private_key(key, password=None)
            except (ValueError, TypeError) as e:
                raise InvalidArgument(f"[cluster] tls_key_file {cfg.file(s.tls_key_file)}: "
                                      f"not an unencrypted PEM private key ({e})") from None
            pub = serialization.PublicFormat.SubjectPublicKeyInfo
            enc = serialization.Encoding.DER
            if private.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(
                    enc, pub):
                raise InvalidArgument("[cluster] tls_key_file does not belong to the "
                                      "certificate in tls_cert_file")
            client_ca = None
            if s.tls_client_ca_file:
                client_ca = _read_file(cfg, s.tls_client_ca_file, "tls_client_ca_file")
                _certs(client_ca, cfg, s.tls_client_ca_file, "tls_client_ca_file")
            ca = None
            if s.tls_ca_file:
                ca = _read_file(cfg, s.tls_ca_file, "tls_ca_file")
                _certs(ca, cfg, s.tls_ca_file, "tls_ca_file")
            server_creds = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            channel_creds = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=key if client_ca is not None else None,
                certificate_chain=cert if client_ca is not None else None,
            )
        policy = None
        internal = ""
        if s.auth_file:
            internal = internal_token(cfg.cluster_secret())
            policy = load_auth_file(cfg.file(s.auth_file), internal=internal)
        return cls(server_creds, channel_creds, policy, internal, bool(s.tls_client_ca_file))

    @property
    def gateway_allowed(self) -> bool:
        """Whether the HTTP gateway may be served (see the module docstring)."""
        return not (self.mutual_tls and self.policy is None)

    def interceptor(
        self,
        *,
        lease_keys: Callable[[int], Collection[bytes] | None],
        header: Callable[[], pb.ResponseHeader],
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> AuthInterceptor | None:
        if self.policy is None:
            return None
        return AuthInterceptor(self.policy, lease_keys=lease_keys, header=header,
                               barrier=barrier)

    def _channel(self, target: str, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[ClientInterceptor] | None) -> grpc.aio.Channel:
        icpt = list(interceptors) if interceptors else None
        if self.channel_credentials is None:
            return grpc.aio.insecure_channel(target, options=list(options), interceptors=icpt)
        return grpc.aio.secure_channel(target, self.channel_credentials, options=list(options),
                                       interceptors=icpt)

    def leader_channel(self, target: str) -> grpc.aio.Channel:
        """A channel for forwarding to the leader's client API (see the module docstring)."""
        icpt: list[ClientInterceptor] = []
        if self.policy is not None:
            icpt = [_ForwardUnary(), _ForwardStream(f"Bearer {self.internal}")]
        return self._channel(target, (), icpt)

    def gateway_channel(
        self, target: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """A channel for the HTTP gateway to its own node: TLS when on, no credential."""
        return self._channel(target, options, None)
