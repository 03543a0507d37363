"""The policy model: principals (an authenticated caller and its permissions, the union of its
roles'), users by token digest, and the decisions on them.

Authentication (`AuthPolicy.authenticate`): exactly one `authorization: Bearer <token>` metadata
entry whose SHA-256 matches a user's (compared in constant time against every user); otherwise
`Unauthenticated`. etcd clients log in with `Auth.Authenticate(name, password)`, where the
password is the user's token (`AuthPolicy.verify`), and then send `token: <token>`, read here as
`authorization: Bearer <token>`.

Authorization (`Principal`): a user's permissions are the union of its roles'. Write permission
does not imply read. A key range is permitted when ONE permitted prefix covers it entirely
(`covers`). The role "root" is built in: everything. The cluster-internal credential
(`internal_token`; see `raftreg.api.auth.security`) authenticates as the principal "(cluster)",
which may ONLY call LeaseKeepAlive. Which method needs which permission: `raftreg.api.auth.rules`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from raftreg.api.auth.ranges import covers, describe
from raftreg.errors import InvalidArgument, PermissionDenied, Unauthenticated

AUTH_HEADER = "authorization"
ROOT_ROLE = "root"
INTERNAL_USER = "(cluster)"
_INTERNAL_LABEL = b"raftreg client API internal credential v1"
ETCD_TOKEN_HEADER = "token"  # how etcd clients send the token Authenticate gave them


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
    """The cluster-internal credential (see `raftreg.api.auth.security`), derived from the
    secret."""
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
