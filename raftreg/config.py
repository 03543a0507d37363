"""Settings, built from `cluster.toml` and passed down as explicit arguments.

Nothing here is a module global: `load_config()` returns a `ClusterConfig`, and every component
receives the part it needs. `dev_config()` builds a single-node cluster for development that needs
no file at all.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from raftreg.errors import InvalidArgument
from raftreg.logfmt import FORMATS as LOG_FORMATS
from raftreg.logfmt import LEVELS as LOG_LEVELS
from raftreg.logfmt import LogFormat

# How many of one client's most recent write sequence numbers the store remembers results for
# (`raftreg.store.identity.ClientTable`): the server's `client_window` setting by default, and
# the default write window of `raftreg.client.GrpcRegistryClient`, which never has writes more
# than this many sequence numbers apart unfinished (so a retry is never refused as too old).
DEFAULT_CLIENT_WINDOW = 1024

# raftreg's many-lease keepalive (`LeaseKeepAliveRequest.IDs`): the most lease ids a server
# renews for one message, and the most a client puts in one.
MAX_KEEPALIVE_IDS = 1000


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    raft: str  # host:port of the peer (PySyncObj) port
    client: str  # host:port of the gRPC API
    # host:port of the node's HTTP endpoint (GET /metrics, and the JSON gateway /v3/...);
    # "" disables it
    http: str = ""
    data_dir: str = ""  # defaults to <cluster.data_dir>/<name>


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    name: str = "raftreg"
    # Secret for the raft port (raftreg/consensus/peer.py: both ends prove it before anything
    # else is read; every message is then encrypted and authenticated). Required: a node
    # refuses to start without one, with one shorter than MIN_SECRET_BYTES, or with an example
    # secret printed in the docs. Give it inline (`secret`) or, better, in a file of its own
    # kept out of version control (`secret_file`, relative to cluster.toml;
    # `scripts/start-cluster.sh` creates it, mode 0600, on first use). Not both.
    secret: str = ""
    secret_file: str = ""
    data_dir: str = "data"
    # Raft timing (seconds). Election timeout is drawn from [min, max].
    heartbeat_interval: float = 0.05
    election_timeout_min: float = 0.4
    election_timeout_max: float = 0.8
    # A leader that has not heard from a majority for this long steps down.
    leader_fallback_timeout: float = 0.6
    # Group commit: proposals arriving while this many log entries are being committed wait
    # and leave together, up to batch_max per entry.
    max_inflight_batches: int = 1
    batch_max: int = 512
    # Log compaction (snapshot) thresholds.
    snapshot_entries: int = 20000
    snapshot_interval_s: float = 600.0
    # How long a proposal waits for its commit before answering "outcome unknown".
    propose_timeout_s: float = 5.0
    # Store limits.
    max_value_bytes: int = 1_572_864
    max_txn_ops: int = 128
    # Automatic compaction keeps this many revisions of history (0 disables it).
    auto_compact_retain: int = 100_000
    # Leases.
    min_lease_ttl: int = 2
    # The leader records the remaining TTL of every lease with more than this many seconds
    # left, this often (etcd's lease checkpoints, raftreg/server/lessor.py); a new leader
    # gives such a lease its remaining TTL instead of a full one. 0 turns checkpoints off.
    lease_checkpoint_interval_s: float = 300.0
    # Request-identity entries of clients idle this long are forgotten.
    client_idle_expiry_s: float = 3600.0
    # Request identity: per client, the results of the last `client_window` sequence numbers
    # are remembered; a retry of an older one is refused ("request id too old"). Part of the
    # replicated state machine, like the store limits: the same on every node. A client must
    # not use a larger write window (GrpcRegistryClient(write_window=...), by default this
    # default) than the cluster's.
    client_window: int = DEFAULT_CLIENT_WINDOW
    # Watches: events queued per watch stream; a watcher that would pass it catches up from
    # the store's history as its stream drains (not cancelled).
    watch_buffer_events: int = 10_000
    watch_progress_interval_s: float = 10.0
    use_uvloop: bool = True
    # Node logs on stderr: "text" (one line per record) or "json" (one object per line); the
    # fields are the same (raftreg/logfmt.py).
    log_format: LogFormat = "text"
    # Least severe level logged: "debug", "info", "warning" or "error".
    log_level: str = "info"
    # --- Client API security (raftreg/api/auth/). All off by default. Relative paths are
    # taken from the directory of cluster.toml. The raft peer port is not affected: it is
    # protected by `secret`.
    # TLS on the client gRPC API: the server certificate (chain) and its key, PEM. TLS is on
    # when both are set (one without the other is an error).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Mutual TLS: when set (needs TLS), every client must present a certificate signed by
    # this CA (PEM). A node then presents its own server certificate when it calls the client
    # API of itself or of the leader, so that certificate must be signed by this CA too and
    # allow client authentication (or carry no extended key usage).
    tls_client_ca_file: str = ""
    # The CA (PEM) that signed the nodes' server certificates: nodes verify each other with it
    # on their internal client-API calls (lease forwarding to the leader, the HTTP gateway's
    # calls to its own node). "" = the system trust store.
    tls_ca_file: str = ""
    # Token authentication and prefix authorization: a TOML file of roles and users (format in
    # raftreg/api/auth/authfile.py). "" = off: every client may do everything.
    auth_file: str = ""

    def __post_init__(self) -> None:
        if self.lease_checkpoint_interval_s < 0:
            raise InvalidArgument("[cluster]: lease_checkpoint_interval_s must be >= 0")
        if self.client_window < 1:
            raise InvalidArgument("[cluster]: client_window must be >= 1")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InvalidArgument("[cluster]: tls_cert_file and tls_key_file go together")
        if self.secret and self.secret_file:
            raise InvalidArgument("[cluster]: give secret or secret_file, not both")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise InvalidArgument(
                "[cluster]: tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file"
            )

    @property
    def tls(self) -> bool:
        """Whether the client API is served over TLS."""
        return bool(self.tls_cert_file)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    settings: ClusterSettings
    nodes: tuple[NodeConfig, ...] = field(default_factory=tuple)
    path: Path | None = None

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise InvalidArgument(f"no node named {name!r} in {self.path or 'the configuration'}")

    def data_dir(self, node: NodeConfig) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        d = Path(node.data_dir) if node.data_dir else Path(self.settings.data_dir) / node.name
        return d if d.is_absolute() else base / d

    def file(self, name: str) -> Path:
        """A file named in the settings: relative paths are taken from the directory of the
        configuration file (the working directory when there is none)."""
        p = Path(name)
        if p.is_absolute():
            return p
        base = self.path.parent if self.path is not None else Path.cwd()
        return base / p

    @property
    def client_endpoints(self) -> list[str]:
        return [n.client for n in self.nodes]

    def cluster_secret(self) -> str:
        """The cluster secret a node runs with (from `secret` or `secret_file`); raises
        `InvalidArgument` saying how to fix it when it is missing, short or an example."""
        s = self.settings
        where = "[cluster] secret"
        value = s.secret
        if s.secret_file:
            path = self.file(s.secret_file)
            where = f"the secret file {path}"
            try:
                value = path.read_text().strip()
            except FileNotFoundError:
                raise InvalidArgument(
                    f"{where} does not exist; create it with `raftreg secret {path}` "
                    "(scripts/start-cluster.sh does so on first use)"
                ) from None
        check_secret(value, where)
        return value


# Secrets that appear in this project's docs and history: never accepted.
EXAMPLE_SECRETS = frozenset({"local-dev-secret-change-me", "test-secret", "demo-secret"})
MIN_SECRET_BYTES = 16


def check_secret(value: str, where: str = "the cluster secret") -> None:
    """Refuse a missing, short (< MIN_SECRET_BYTES bytes) or published example secret."""
    fix = ("generate one with `raftreg secret FILE` and name FILE as secret_file in [cluster] "
           "(or let scripts/start-cluster.sh do it)")
    if not value:
        raise InvalidArgument(f"a cluster secret is required on the raft port: {fix}")
    if value in EXAMPLE_SECRETS:
        raise InvalidArgument(f"{where} is an example from the docs, known to anyone: {fix}")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise InvalidArgument(
            f"{where} is shorter than {MIN_SECRET_BYTES} bytes: {fix}"
        )


def new_secret() -> str:
    """A fresh random cluster secret (32 random bytes, URL-safe text)."""
    return secrets.token_urlsafe(32)


def write_secret_file(path: Path) -> bool:
    """Create `path` (mode 0600) holding a new secret; False if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise InvalidArgument(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    return cls(**raw)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> ClusterConfig:
    settings = _build(ClusterSettings, dict(raw.get("cluster", {})), "[cluster]")
    if settings.log_format not in LOG_FORMATS:
        raise InvalidArgument(f"[cluster] log_format must be one of {', '.join(LOG_FORMATS)}")
    if settings.log_level not in LOG_LEVELS:
        raise InvalidArgument(f"[cluster] log_level must be one of {', '.join(LOG_LEVELS)}")
    nodes = tuple(_build(NodeConfig, dict(n), "[[node]]") for n in raw.get("node", []))
    if not nodes:
        raise InvalidArgument("configuration names no [[node]]")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise InvalidArgument("node names must be unique")
    for n in nodes:
        for addr in (n.raft, n.client) + ((n.http,) if n.http else ()):
            split_hostport(addr)
    return ClusterConfig(settings=settings, nodes=nodes, path=path)


def load_config(path: str | Path) -> ClusterConfig:
    p = Path(path).resolve()
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"configuration file {p} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{p}: {e}") from None
    return parse_config(raw, p)


def dev_config(
    data_dir: str | Path, client: str = "127.0.0.1:2379", raft: str = "127.0.0.1:2380",
    http: str = "",
) -> ClusterConfig:
    """A one-node cluster for development: a fresh random secret, everything on loopback;
    `http` ("" = none) serves the JSON gateway and /metrics."""
    settings = ClusterSettings(
        name="raftreg-dev", secret=new_secret(), data_dir=str(data_dir)
    )
    node = NodeConfig(name="dev", raft=raft, client=client, http=http,
                      data_dir=str(Path(data_dir)))
    return ClusterConfig(settings=settings, nodes=(node,), path=None)


def split_hostport(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)

