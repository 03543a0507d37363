"""Security of the client gRPC API: TLS settings, token authentication, prefix authorization.

Everything here is off unless configured (`[cluster]` settings `tls_cert_file`/`tls_key_file`,
`tls_client_ca_file`, `tls_ca_file`, `auth_file`; see `raftreg.config.ClusterSettings`).
`NodeSecurity.load(cfg)` reads and checks every file once, at node start.

Modules, each with its contract in its docstring. Imports point one way, ranges <- policy <-
authfile, rules <- interceptor; security uses them and nothing here imports it:
- `ranges`: key ranges in etcd's encoding and prefix coverage (`covers`, `describe`); the
  prefix rule itself is `raftreg.common.keys.prefix_range_end`.
- `policy`: principals and their permissions, users by token digest, authentication
  (`Principal`, `AuthPolicy`, `token_sha256`, `internal_token`).
- `authfile`: the TOML auth file, its format and validation (`parse_auth`, `load_auth_file`).
- `rules`: which method needs which permission on which key range, including etcd's method
  names (`native_method`, the `check_*` functions, the method-name constants).
- `interceptor`: the grpc.aio server interceptor and its refusals (`AuthInterceptor`).
- `security`: `NodeSecurity`: TLS credentials, the channels for forwarding to the leader and
  for the HTTP gateway, `gateway_allowed`.

Re-exported here: the names used from outside this package.
"""

from __future__ import annotations

from raftreg.api.auth.authfile import load_auth_file, parse_auth
from raftreg.api.auth.interceptor import AuthInterceptor
from raftreg.api.auth.policy import (
    INTERNAL_USER,
    AuthPolicy,
    Principal,
    internal_token,
    token_sha256,
)
from raftreg.api.auth.ranges import covers
from raftreg.api.auth.rules import (
    BATCH,
    DELETE_RANGE,
    LEASE_GRANT,
    LEASE_KEEPALIVE,
    LEASE_LEASES,
    LEASE_REVOKE,
    LEASE_TTL,
    MEMBER_LIST,
    PUT,
    RANGE,
    STATUS,
    TXN,
    WATCH,
    check_delete,
    check_put,
    check_range,
    check_txn,
    native_method,
)
from raftreg.api.auth.security import NodeSecurity

__all__ = [
    "BATCH",
    "DELETE_RANGE",
    "INTERNAL_USER",
    "LEASE_GRANT",
    "LEASE_KEEPALIVE",
    "LEASE_LEASES",
    "LEASE_REVOKE",
    "LEASE_TTL",
    "MEMBER_LIST",
    "PUT",
    "RANGE",
    "STATUS",
    "TXN",
    "WATCH",
    "AuthInterceptor",
    "AuthPolicy",
    "NodeSecurity",
    "Principal",
    "check_delete",
    "check_put",
    "check_range",
    "check_txn",
    "covers",
    "internal_token",
    "load_auth_file",
    "native_method",
    "parse_auth",
    "token_sha256",
]
