"""Security of the client gRPC API: TLS settings, token authentication, prefix authorization.

Everything here is off unless configured (`[cluster]` settings `tls_cert_file`/`tls_key_file`,
`tls_client_ca_file`, `tls_ca_file`, `auth_file`; see `raftreg.config.ClusterSettings`).
`NodeSecurity.load(cfg)` reads and checks every file once, at node start.

Auth file (TOML; `token_sha256` is the hex SHA-256 of the token, never the token itself:
`printf %s "$TOKEN" | sha256sum`, or `token_sha256()` below):

    [[role]]
    name = "services-rw"
    read = ["/services/", "/config/"]   # key prefixes; "" or "*" = every key
    write = ["/services/"]

    [[user]]
    name = "gateway"
    token_sha256 = "<64 hex digits>"
    roles = ["services-rw"]             # "root" is built in: everything

Under etcd's service names (`/etcdserverpb.KV/Put`, ...) every rule below applies as to the
raftreg.v1 method of the same name, and refusals are worded as etcd's. etcd clients log in with
`Auth.Authenticate(name, password)`, where the password is the user's token, and then send
`token: <token>`, read here as `authorization: Bearer <token>`; Authenticate and AuthStatus
need no credential.

Authentication: every call except grpc.health.v1 must carry exactly one `authorization:
Bearer <token>` metadata entry whose SHA-256 matches a user's (compared in constant time
against every user); otherwise UNAUTHENTICATED and nothing runs. Role names are unique, "root"
is reserved, users' names and token digests are unique; anything else in the file is an error.

Authorization, per request, before the servicer sees it (PERMISSION_DENIED, nothing changed).
A user's permissions are the union of its roles'. Write permission does not imply read.
- A key range is permitted when ONE permitted prefix covers it entirely (`covers`).
- KV.Range: read on [key, range_end). KV.Put: write on the key, plus read with prev_kv.
  KV.DeleteRange: write on the range, plus read with prev_kv. KV.Txn: read on every compare's
  range, and every operation of BOTH branches as if alone (nested txns too).
- KV.Batch: each operation as its unary call. A refused operation is answered on the stream
  with its own PERMISSION_DENIED `OpError` and never reaches the store; the stream and the
  other operations carry on (the client multiplexes unrelated callers on one Batch stream,
  so refusing the whole stream would fail calls that are allowed).
- Watch.Watch: each create needs read on its range. A refused create is answered as etcd
  does: `created` + `canceled` with the denial as `cancel_reason`; the stream carries on. To
  keep the creates' first-in first-out answers, a refusal waits until every earlier create on
  the stream was answered.
- Leases (grant, revoke, keepalive, time-to-live, list): any user with some write permission
  (leases exist to keep written keys alive). LeaseRevoke also needs write on every key
  attached to the lease (revoking deletes them), LeaseTimeToLive with `keys` read on every
  attached key; attached keys are looked up on the receiving node's replica at request time.
- Maintenance.Status, Cluster.MemberList: any authenticated user.
- KV.Compact, Maintenance.Snapshot, Cluster.MemberAdd/MemberRemove, and every method not
  named above (so a method added later is root-only until classified): root only.

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

import asyncio
import hashlib
import hmac
import inspect
import logging
import string
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raftreg.api.status import ERROR_KEY, StatusFor, etcd_status_for, status_for
from raftreg.config import ClusterConfig
from raftreg.errors import InvalidArgument, PermissionDenied, RegistryError, Unauthenticated
from raftreg.pb import raftreg_pb2 as pb
from raftreg.resilience import handler_behavior, rebuild_handler, refusing_handler

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor
    Handler = Any
# What the grpc.aio channel constructors take as interceptors (a placeholder in grpc-stubs).
ClientInterceptor = Any

log = logging.getLogger("raftreg.auth")

AUTH_HEADER = "authorization"
ROOT_ROLE = "root"
INTERNAL_USER = "(cluster)"
_INTERNAL_LABEL = b"raftreg client API internal credential v1"
ETCD_TOKEN_HEADER = "token"  # how etcd clients send the token Authenticate gave them
_EXEMPT_PREFIX = "/grpc.health.v1.Health/"
# Callable before authenticating, under either name (the credential check IS Authenticate).
_EXEMPT = frozenset({"/raftreg.v1.Auth/Authenticate", "/raftreg.v1.Auth/AuthStatus"})
_ETCD_TO_NATIVE = ("/etcdserverpb.", "/raftreg.v1.")


def native_method(method: str) -> str:
    """The raftreg.v1 name of a method called under etcd's service names (same rules)."""
    etcd, native = _ETCD_TO_NATIVE
    return native + method[len(etcd):] if method.startswith(etcd) else method


# The raftreg.v1 methods the rules name.
RANGE = "/raftreg.v1.KV/Range"
PUT = "/raftreg.v1.KV/Put"
DELETE_RANGE = "/raftreg.v1.KV/DeleteRange"
TXN = "/raftreg.v1.KV/Txn"
COMPACT = "/raftreg.v1.KV/Compact"
BATCH = "/raftreg.v1.KV/Batch"
WATCH = "/raftreg.v1.Watch/Watch"
LEASE_GRANT = "/raftreg.v1.Lease/LeaseGrant"
LEASE_REVOKE = "/raftreg.v1.Lease/LeaseRevoke"
LEASE_KEEPALIVE = "/raftreg.v1.Lease/LeaseKeepAlive"
LEASE_TTL = "/raftreg.v1.Lease/LeaseTimeToLive"
LEASE_LEASES = "/raftreg.v1.Lease/LeaseLeases"
MEMBER_LIST = "/raftreg.v1.Cluster/MemberList"
MEMBER_ADD = "/raftreg.v1.Cluster/MemberAdd"
MEMBER_REMOVE = "/raftreg.v1.Cluster/MemberRemove"
STATUS = "/raftreg.v1.Maintenance/Status"
SNAPSHOT = "/raftreg.v1.Maintenance/Snapshot"

# The `authorization` value of the call being served (None: none), for forwarding.
_CALLER_AUTH: ContextVar[str | None] = ContextVar("raftreg_caller_auth", default=None)


# --- key ranges --------------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """The range_end of every key starting with `prefix` (etcd's GetPrefixRangeEnd); b"\\0"
    (every key >= prefix) when the prefix is empty or all 0xff."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def covers(prefix: bytes, key: bytes, range_end: bytes) -> bool:
    """Whether every key of the range (etcd's encoding: range_end b"" = the single key,
    b"\\0" = every key >= key, else [key, range_end)) starts with `prefix`.

    Keys starting with `prefix` are exactly [prefix, prefix_end(prefix)), so the range is
    covered when it starts inside that interval and ends no later. A range_end <= key (an
    empty range) that starts inside is covered too."""
    if not key.startswith(prefix):
        return False
    if range_end == b"":
        return True
    limit = prefix_end(prefix)
    if limit == b"\0":  # the prefix reaches the end of the key space
        return True
    return range_end != b"\0" and range_end <= limit


def _text(b: bytes) -> str:
    return repr(b.decode("utf-8", errors="backslashreplace"))


def describe(key: bytes, range_end: bytes) -> str:
    if range_end == b"":
        return f"key {_text(key)}"
    if range_end == b"\0":
        return f"every key >= {_text(key)}"
    if range_end == prefix_end(key):
        return f"keys with prefix {_text(key)}"
    return f"range [{_text(key)}, {_text(range_end)})"


# --- principals --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and its permissions (union of its roles)."""

    name: str
    root: bool = False
    internal: bool = False  # the cluster-internal credential: LeaseKeepAlive only
    read: tuple[bytes, ...] = ()
    write: tuple[bytes, ...] = ()

    def may_read(self, key: bytes, range_end: bytes = b"") -> bool:
        return self.root or any(covers(p, key, range_end) for p in self.read)

    def may_write(self, key: bytes, range_end: bytes = b"") -> bool:
        return self.root or any(covers(p, key, range_end) for p in self.write)

    @property
    def writer(self) -> bool:
        return self.root or bool(self.write)

    def need_read(self, key: bytes, range_end: bytes = b"") -> None:
        if not self.may_read(key, range_end):
            raise PermissionDenied(
                f"permission denied: user {self.name!r} may not read {describe(key, range_end)}"
            )

    def need_write(self, key: bytes, range_end: bytes = b"") -> None:
        if not self.may_write(key, range_end):
            raise PermissionDenied(
                f"permission denied: user {self.name!r} may not write {describe(key, range_end)}"
            )

    def need_writer(self) -> None:
        if not self.writer:
            raise PermissionDenied(
                f"permission denied: leases need some write permission; user {self.name!r} "
                "has none"
            )

    def need_root(self, what: str) -> None:
        if not self.root:
            raise PermissionDenied(f"permission denied: {what} needs the root role "
                                   f"(user {self.name!r})")


def token_sha256(token: str) -> str:
    """The auth file's `token_sha256` of `token` (hex SHA-256 of its UTF-8 bytes)."""
    return hashlib.sha256(token.encode()).hexdigest()


def internal_token(secret: str) -> str:
    """The cluster-internal credential (see the module docstring), derived from the secret."""
    mac = hmac.new(secret.encode(), _INTERNAL_LABEL, hashlib.sha256).hexdigest()
    return f"raftreg-internal.{mac}"


class AuthPolicy:
    """Users by token digest. `authenticate` maps call metadata to a `Principal`."""

    def __init__(self, users: Sequence[tuple[bytes, Principal]]) -> None:
        digests = [d for d, _ in users]
        if len(set(digests)) != len(digests):
            raise InvalidArgument("two users have the same token")
        self._users = tuple(users)

    @property
    def principals(self) -> tuple[Principal, ...]:
        return tuple(p for _, p in self._users)

    def verify(self, name: str, token: str) -> bool:
        """Whether `token` is the token of the user called `name` (etcd's Authenticate, where
        the token is the password)."""
        candidate = hashlib.sha256(token.encode()).digest()
        ok = False
        for digest, principal in self._users:  # no early exit: constant time over users
            ok |= hmac.compare_digest(candidate, digest) and principal.name == name
        return ok

    def authenticate(self, metadata: object) -> tuple[Principal, str]:
        """(principal, the `authorization` value) or `Unauthenticated`. etcd's `token` entry
        stands for `authorization: Bearer <token>` when there is no `authorization`."""
        pairs = _pairs(metadata)
        values = [v for k, v in pairs if k.lower() == AUTH_HEADER]
        if not values:
            values = [f"Bearer {v.decode(errors='replace') if isinstance(v, bytes) else v}"
                      for k, v in pairs if k.lower() == ETCD_TOKEN_HEADER]
        if not values:
            raise Unauthenticated("authentication required: no bearer token "
                                  "(authorization: Bearer <token>)")
        if len(values) > 1:
            raise Unauthenticated("more than one authorization entry")
        raw = values[0]
        value = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        candidate = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for digest, principal in self._users:  # no early exit: constant time over users
            if hmac.compare_digest(candidate, digest):
                found = principal
        if found is None:
            raise Unauthenticated("invalid token")
        return found, value


def _pairs(md: object) -> list[tuple[str, str | bytes]]:
    if not md:
        return []
    return [(k, v) for k, v in md]  # type: ignore[attr-defined]


def _prefixes(value: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InvalidArgument(f"{where} must be a list of strings")
    return tuple(b"" if x in ("", "*") else x.encode() for x in value)


def _table_list(raw: dict[str, Any], name: str, where: str) -> list[dict[str, Any]]:
    items = raw.get(name, [])
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise InvalidArgument(f"{where}: {name} must be an array of tables ([[{name}]])")
    return items


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise InvalidArgument(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")


def parse_auth(raw: dict[str, Any], where: str) -> list[tuple[bytes, Principal]]:
    """Users (token digest, principal) from an auth file's TOML (format in the module
    docstring); `InvalidArgument` naming `where` for anything wrong."""
    _check_keys(raw, {"role", "user"}, where)
    roles: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
    for i, r in enumerate(_table_list(raw, "role", where)):
        at = f"{where}: role #{i + 1}"
        _check_keys(r, {"name", "read", "write"}, at)
        name = r.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{at}: name must be a non-empty string")
        if name == ROOT_ROLE:
            raise InvalidArgument(f"{at}: {ROOT_ROLE!r} is built in and cannot be defined")
        if name in roles:
            raise InvalidArgument(f"{at}: role {name!r} is defined twice")
        roles[name] = (_prefixes(r.get("read", []), f"{at} ({name}): read"),
                       _prefixes(r.get("write", []), f"{at} ({name}): write"))
    users: list[tuple[bytes, Principal]] = []
    names: set[str] = set()
    for i, u in enumerate(_table_list(raw, "user", where)):
        at = f"{where}: user #{i + 1}"
        _check_keys(u, {"name", "token_sha256", "roles"}, at)
        name = u.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{at}: name must be a non-empty string")
        if name in names or name == INTERNAL_USER:
            raise InvalidArgument(f"{at}: user name {name!r} is taken")
        names.add(name)
        digest = u.get("token_sha256")
        if (not isinstance(digest, str) or len(digest) != 64
                or any(c not in string.hexdigits for c in digest)):
            raise InvalidArgument(f"{at} ({name}): token_sha256 must be 64 hex digits (the "
                                  "SHA-256 of the token, not the token)")
        user_roles = u.get("roles", [])
        if not isinstance(user_roles, list) or not all(isinstance(x, str) for x in user_roles):
            raise InvalidArgument(f"{at} ({name}): roles must be a list of role names")
        read: list[bytes] = []
        write: list[bytes] = []
        for role in user_roles:
            if role == ROOT_ROLE:
                continue
            if role not in roles:
                raise InvalidArgument(f"{at} ({name}): unknown role {role!r}")
            read += roles[role][0]
            write += roles[role][1]
        principal = Principal(
            name=name, root=ROOT_ROLE in user_roles,
            read=tuple(dict.fromkeys(read)), write=tuple(dict.fromkeys(write)),
        )
        users.append((bytes.fromhex(digest), principal))
    if not users:
        raise InvalidArgument(f"{where}: names no [[user]] (nobody could use the registry)")
    return users


def load_auth_file(path: Path, *, internal: str | None = None) -> AuthPolicy:
    """The policy of the auth file at `path`, plus the cluster-internal credential `internal`
    (`internal_token(secret)`) when given."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise InvalidArgument(f"auth file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"auth file {path}: {e}") from None
    users = parse_auth(raw, f"auth file {path}")
    if internal is not None:
        digest = hashlib.sha256(internal.encode()).digest()
        users.append((digest, Principal(name=INTERNAL_USER, internal=True)))
    try:
        return AuthPolicy(users)
    except InvalidArgument as e:
        raise InvalidArgument(f"auth file {path}: {e}") from None


# --- request checks ----------------------------------------------------------------------------

Check = Callable[["Principal", Any], None]


def check_range(p: Principal, r: pb.RangeRequest) -> None:
    p.need_read(r.key, r.range_end)


def check_put(p: Principal, r: pb.PutRequest) -> None:
    p.need_write(r.key)
    if r.prev_kv:
        p.need_read(r.key)


def check_delete(p: Principal, r: pb.DeleteRangeRequest) -> None:
    p.need_write(r.key, r.range_end)
    if r.prev_kv:
        p.need_read(r.key, r.range_end)


def check_txn(p: Principal, r: pb.TxnRequest) -> None:
    for c in r.compare:
        p.need_read(c.key, c.range_end)
    for op in (*r.success, *r.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            check_range(p, op.request_range)
        elif which == "request_put":
            check_put(p, op.request_put)
        elif which == "request_delete_range":
            check_delete(p, op.request_delete_range)
        elif which == "request_txn":
            check_txn(p, op.request_txn)


def check_tagged(p: Principal, op: pb.TaggedRequest) -> None:
    """A Batch operation, as its unary call (an empty one is left to the servicer)."""
    which = op.WhichOneof("request")
    if which == "range":
        check_range(p, op.range)
    elif which == "put":
        check_put(p, op.put)
    elif which == "delete_range":
        check_delete(p, op.delete_range)
    elif which == "txn":
        check_txn(p, op.txn)


def _anyone(p: Principal, r: Any) -> None:
    return None


def _writer(p: Principal, r: Any) -> None:
    p.need_writer()


def _root(what: str) -> Check:
    def check(p: Principal, r: Any) -> None:
        p.need_root(what)

    return check


def _verdict(check: Check, p: Principal, request: Any) -> RegistryError | None:
    try:
        check(p, request)
    except RegistryError as e:
        return e
    return None


# --- the server interceptor --------------------------------------------------------------------


async def _abort(context: Any, err: RegistryError, wording: StatusFor = status_for) -> None:
    code, details, md = wording(err)
    context.set_trailing_metadata(md)
    await context.abort(code, details)


def _refusing(handler: Handler, err: RegistryError,
              wording: StatusFor = status_for) -> Handler:
    """`handler` answering `err` without running (see `refusing_handler`)."""

    async def refuse(context: Any) -> None:
        await _abort(context, err, wording)

    return refusing_handler(handler, refuse)


def _guarded(behavior: Any, before: Callable[[Any, Any], Awaitable[None]],
             auth_value: str) -> Any:
    """`behavior` (any async kind) run after `await before(request, context)` (which may
    abort), with `_CALLER_AUTH` set to the caller's authorization."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            _CALLER_AUTH.set(auth_value)  # this call's own task: nothing to restore
            await before(request, context)
            async for item in behavior(request, context):
                yield item

        return agen

    async def coro(request: Any, context: Any) -> Any:
        token = _CALLER_AUTH.set(auth_value)
        try:
            await before(request, context)
            return await behavior(request, context)
        finally:
            _CALLER_AUTH.reset(token)

    return coro


class _Gate:
    """Runs a stream-stream async-generator behaviour on the admitted part of its request
    stream. `admit(request)` returns (what to pass on or None, what to answer or None);
    answers are merged into the response stream. `observe` sees every response the behaviour
    produced AFTER it is queued for the client (so an answer queued later follows it)."""

    def __init__(self, admit: Callable[[Any], Awaitable[tuple[Any, Any]]],
                 observe: Callable[[Any], None] = lambda r: None,
                 on_end: Callable[[], None] = lambda: None) -> None:
        self._admit = admit
        self._observe = observe
        self._on_end = on_end

    async def run(self, behavior: Any, request_iterator: AsyncIterator[Any],
                  context: Any) -> AsyncIterator[Any]:
        # One slot: the behaviour's own flow control (e.g. the watch buffer accounting, which
        # counts what it has yielded) still sees a slow client.
        out: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

        async def requests() -> AsyncIterator[Any]:
            async for req in request_iterator:
                passed, answer = await self._admit(req)
                if answer is not None:
                    await out.put((False, answer))
                if passed is not None:
                    yield passed

        async def pump() -> None:
            responses = behavior(requests(), context)
            try:
                async for resp in responses:
                    await out.put((False, resp))
                    self._observe(resp)
            except Exception as e:  # incl. grpc.aio.AbortError: re-raised by the caller
                self._on_end()
                await out.put((True, e))
            else:
                self._on_end()
                await out.put((True, None))
            finally:
                await responses.aclose()

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while True:
                final, item = await out.get()
                if not final:
                    yield item
                elif item is not None:
                    raise item
                else:
                    return
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:
                log.debug("stream behaviour ended with an error after its call", exc_info=True)


def _op_error(err: RegistryError) -> pb.OpError:
    code, details, md = status_for(err)
    return pb.OpError(code=code.value[0], message=details, kind=dict(md).get(ERROR_KEY, ""))


class AuthInterceptor(_ServerInterceptor):
    """Authenticates every call (except grpc.health.v1) and authorizes its requests by the
    rules in the module docstring. Expects raftreg's servicers: async behaviours, and async
    generators for KV.Batch and Watch.Watch.

    `lease_keys(id)` gives the keys attached to a lease on this node's replica (None: no
    such lease); `header()` the response header for refused watch creates; `barrier()`, when
    given, is awaited before a lease's keys are read for LeaseRevoke / LeaseTimeToLive, so a
    lagging replica never checks them against an older key set (a Put racing the revoke on
    the leader can still attach a key between the check and the revoke)."""

    def __init__(
        self,
        policy: AuthPolicy,
        *,
        lease_keys: Callable[[int], Collection[bytes] | None],
        header: Callable[[], pb.ResponseHeader],
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self._lease_keys = lease_keys
        self._header = header
        self._barrier = barrier
        self._unary: dict[str, Check] = {
            RANGE: check_range,
            PUT: check_put,
            DELETE_RANGE: check_delete,
            TXN: check_txn,
            LEASE_GRANT: _writer,
            LEASE_REVOKE: self._check_revoke,
            LEASE_TTL: self._check_ttl,
            LEASE_LEASES: _writer,
            STATUS: _anyone,
            MEMBER_LIST: _anyone,
        }

    def _check_revoke(self, p: Principal, r: pb.LeaseRevokeRequest) -> None:
        p.need_writer()
        for key in sorted(self._lease_keys(r.ID) or ()):
            p.need_write(key)

    def _check_ttl(self, p: Principal, r: pb.LeaseTimeToLiveRequest) -> None:
        p.need_writer()
        if r.keys:
            for key in sorted(self._lease_keys(r.ID) or ()):
                p.need_read(key)

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method = native_method(details.method)
        wording = status_for if method == details.method else etcd_status_for
        if handler is None or method.startswith(_EXEMPT_PREFIX) or method in _EXEMPT:
            return handler
        try:
            principal, auth_value = self.policy.authenticate(details.invocation_metadata)
        except Unauthenticated as e:
            return _refusing(handler, e, wording)
        behavior = handler_behavior(handler)
        if behavior is None:
            return handler
        if principal.internal and method != LEASE_KEEPALIVE:
            return _refusing(handler, PermissionDenied(
                f"permission denied: the cluster-internal credential may not call {method}"),
                wording)
        if not handler.request_streaming:
            check = self._unary.get(method) or _root(method)
            needs_keys = method in (LEASE_REVOKE, LEASE_TTL)

            async def before(request: Any, context: Any) -> None:
                if needs_keys and self._barrier is not None:
                    try:
                        await self._barrier()
                    except RegistryError as e:
                        await _abort(context, e, wording)
                err = _verdict(check, principal, request)
                if err is not None:
                    await _abort(context, err, wording)

            return rebuild_handler(handler, _guarded(behavior, before, auth_value))
        if method == LEASE_KEEPALIVE:
            err = None if principal.internal else _verdict(_writer, principal, None)
        elif method in (BATCH, WATCH) and inspect.isasyncgenfunction(behavior):
            gate = self._batch_gate(principal) if method == BATCH else self._watch_gate(principal)

            async def gated(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
                _CALLER_AUTH.set(auth_value)
                async for item in gate.run(behavior, request_iterator, context):
                    yield item

            return rebuild_handler(handler, gated)
        else:
            err = _verdict(_root(method), principal, None)
        if err is not None:
            return _refusing(handler, err, wording)

        async def nothing(request: Any, context: Any) -> None:
            return None

        return rebuild_handler(handler, _guarded(behavior, nothing, auth_value))

    def _batch_gate(self, p: Principal) -> _Gate:
        async def admit(req: pb.BatchRequest) -> tuple[Any, Any]:
            allowed: list[pb.TaggedRequest] = []
            refused: list[pb.TaggedResponse] = []
            for op in req.ops:
                err = _verdict(check_tagged, p, op)
                if err is None:
                    allowed.append(op)
                else:
                    refused.append(pb.TaggedResponse(tag=op.tag, error=_op_error(err)))
            if not refused:
                return req, None
            passed = pb.BatchRequest(ops=allowed) if allowed else None
            return passed, pb.BatchResponse(results=refused)

        return _Gate(admit)

    def _watch_gate(self, p: Principal) -> _Gate:
        state = _WatchCreates()

        async def admit(req: pb.WatchRequest) -> tuple[Any, Any]:
            if req.WhichOneof("request_union") != "create_request":
                return req, None
            c = req.create_request
            err = _verdict(lambda p_, c_: p_.need_read(c_.key, c_.range_end), p, c)
            if err is None:
                state.outstanding += 1
                return req, None
            # First-in first-out answers to creates: wait for the earlier ones.
            while state.outstanding > 0 and not state.ended:
                state.answered.clear()
                await state.answered.wait()
            return None, pb.WatchResponse(
                header=self._header(), watch_id=c.watch_id or -1, created=True, canceled=True,
                cancel_reason=str(err),
            )

        def observe(resp: pb.WatchResponse) -> None:
            if resp.created:
                state.outstanding -= 1
                state.answered.set()

        def on_end() -> None:
            state.ended = True
            state.answered.set()

        return _Gate(admit, observe, on_end)


@dataclass
class _WatchCreates:
    outstanding: int = 0  # creates passed on and not yet answered
    ended: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)


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
