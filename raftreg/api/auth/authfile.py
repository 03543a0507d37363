"""The auth file: TOML naming roles and users, parsed and validated into an `AuthPolicy`.

Auth file (TOML; `token_sha256` is the hex SHA-256 of the token, never the token itself:
`printf %s "$TOKEN" | sha256sum`, or `raftreg.api.auth.policy.token_sha256()`):

    [[role]]
    name = "services-rw"
    read = ["/services/", "/config/"]   # key prefixes; "" or "*" = every key
    write = ["/services/"]

    [[user]]
    name = "gateway"
    token_sha256 = "<64 hex digits>"
    roles = ["services-rw"]             # "root" is built in: everything

Role names are unique, "root" is reserved, users' names and token digests are unique; anything
else in the file is an error.
"""

from __future__ import annotations

import hashlib
import string
import tomllib
from pathlib import Path
from typing import Any

from raftreg.api.auth.policy import INTERNAL_USER, ROOT_ROLE, AuthPolicy, Principal
from raftreg.errors import InvalidArgument


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
