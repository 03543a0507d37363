"""The argparse tree of the `raftreg` command: the global flags (accepted before or after the
subcommand, each with a RAFTREG_* variable as its default), every command with its arguments
and help text, and the command function each one runs (`func`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from raftreg import __version__
from raftreg.cli.cluster import (
    cmd_endpoint_health,
    cmd_endpoint_status,
    cmd_member_add,
    cmd_member_list,
    cmd_member_remove,
)
from raftreg.cli.concurrency import cmd_elect, cmd_lock
from raftreg.cli.config import (
    cmd_config_get,
    cmd_config_history,
    cmd_config_rollback,
    cmd_config_set,
    cmd_config_watch,
)
from raftreg.cli.kv import cmd_compaction, cmd_del, cmd_get, cmd_put, cmd_txn
from raftreg.cli.lease import (
    cmd_lease_grant,
    cmd_lease_keepalive,
    cmd_lease_list,
    cmd_lease_revoke,
    cmd_lease_timetolive,
)
from raftreg.cli.node import cmd_dev, cmd_node, cmd_secret
from raftreg.cli.output import FORMATS, Command, _Ctx
from raftreg.cli.services import cmd_services_list, cmd_services_watch
from raftreg.cli.snapshot import cmd_snapshot_restore, cmd_snapshot_save, cmd_snapshot_status
from raftreg.cli.txn import _add_put_args, _add_range_args, parse_lease_id
from raftreg.cli.watch import cmd_watch
from raftreg.errors import InvalidArgument

DIAL_TIMEOUT_S = 2.0  # etcdctl's defaults
COMMAND_TIMEOUT_S = 5.0


def _env(name: str, default: str | None) -> str | None:
    """A global option's default: its RAFTREG_* variable, else `default`."""
    value = os.environ.get(name, "").strip()
    return value or default


def _seconds(text: str) -> float:
    """A positive duration in seconds: "2", "2.5", "2s" or "500ms" (etcdctl's forms)."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("s"):
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 2, 2s, 500ms)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """Global options; accepted before or after the subcommand. Only the top-level copy has
    defaults (the others SUPPRESS, so they never overwrite a value given earlier). Every one
    has a RAFTREG_* variable, which the flag overrides."""
    p = argparse.ArgumentParser(add_help=False)
    d: Callable[[object], object] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument(
        "--endpoints",
        default=d(None),
        help="comma-separated host:port list; etcd://host:port,... selects the etcd backend "
        "(env RAFTREG_ENDPOINTS; default: the [registry] table or client addresses in the "
        "--config file, else a `raftreg dev` running in this directory, else 127.0.0.1:2379)",
    )
    g.add_argument("-w", "--write-out", choices=FORMATS,
                   default=d(_env("RAFTREG_WRITE_OUT", "simple")),
                   help="output format (env RAFTREG_WRITE_OUT)")
    g.add_argument("--dial-timeout", type=_seconds,
                   default=d(_env("RAFTREG_DIAL_TIMEOUT", str(DIAL_TIMEOUT_S))),
                   help=f"give up connecting after this long (default {DIAL_TIMEOUT_S:g}s; "
                   "env RAFTREG_DIAL_TIMEOUT); exit status 3")
    g.add_argument("--command-timeout", "--timeout", dest="timeout", type=_seconds,
                   default=d(_env("RAFTREG_COMMAND_TIMEOUT", str(COMMAND_TIMEOUT_S))),
                   help=f"bound on each request, retries included (default "
                   f"{COMMAND_TIMEOUT_S:g}s; env RAFTREG_COMMAND_TIMEOUT)")
    g.add_argument("--config", default=d(_env("RAFTREG_CONFIG", "cluster.toml")),
                   help="cluster configuration file (env RAFTREG_CONFIG; default cluster.toml)")
    # dest names of their own: subcommands have positionals called "key"
    g.add_argument("--cacert", dest="tls_cacert", default=d(None),
                   help="verify the servers with this CA (PEM); implies TLS (env RAFTREG_CACERT)")
    g.add_argument("--cert", dest="tls_cert", default=d(None),
                   help="client certificate (PEM) for mutual TLS (env RAFTREG_CERT)")
    g.add_argument("--key", dest="tls_key", default=d(None),
                   help="key of the client certificate (PEM) (env RAFTREG_KEY)")
    g.add_argument("--token", dest="auth_token", default=d(None),
                   help="bearer token sent with every request (env RAFTREG_TOKEN)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="raftreg",
        description="raftreg: a Raft-backed etcd-style service registry",
        parents=[_global_options(defaults=True)],
        epilog="exit status: 0 success, 1 error, 2 bad usage, 3 cannot connect",
    )
    parser.add_argument("--version", action="version", version=f"raftreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def leaf(
        group: Any, name: str, help: str, func: Command | Callable[[argparse.Namespace, _Ctx], int]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=func)
        return p

    _add_put_args(leaf(sub, "put", "put a key", cmd_put))
    _add_range_args(leaf(sub, "get", "get a key or range", cmd_get), reads=True)
    _add_range_args(leaf(sub, "del", "delete a key or range", cmd_del), reads=False)
    leaf(sub, "txn", "run a transaction read from stdin (etcdctl format)", cmd_txn)
    watch = leaf(sub, "watch", "watch a key or range until Ctrl-C", cmd_watch)
    watch.add_argument("key", help="the key, or the start of the range")
    watch.add_argument("range_end", nargs="?", default=None,
                       help="end of the range [KEY, RANGE_END), exclusive")
    watch.add_argument("--prefix", action="store_true", help="every key with this prefix")
    watch.add_argument("--rev", type=int, default=0, help="start at this revision (0 = now)")
    watch.add_argument("--prev-kv", action="store_true", help="also print the previous kv")
    watch.add_argument(
        "--progress-notify", action="store_true", help="ask for progress notifications"
    )
    watch.set_defaults(from_key=False)
    leaf(sub, "compaction", "discard history before REV", cmd_compaction).add_argument(
        "revision", type=int, help="the oldest revision to keep"
    )

    member = sub.add_parser("member", help="cluster membership").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(member, "list", "list members", cmd_member_list)
    madd = leaf(member, "add", "add a member (raftreg), then start it with --join", cmd_member_add)
    madd.add_argument("name", help="the new member's name (its [[node]] name)")
    madd.add_argument("--peer-urls", required=True, help="its raft address, e.g. 127.0.0.1:23804")
    madd.add_argument("--client-urls", required=True, help="its client address host:port")
    leaf(member, "remove", "remove a member (the leader too: it hands over first)",
         cmd_member_remove).add_argument("member", help="member name or hex id")

    snapshot = sub.add_parser("snapshot", help="backup and restore").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(snapshot, "save", "save a backup of the running cluster to FILE",
         cmd_snapshot_save).add_argument("file", help="where to write the backup")
    leaf(snapshot, "status", "verify a backup FILE and describe it",
         cmd_snapshot_status).add_argument("file", help="a backup file")
    restore = leaf(snapshot, "restore",
                   "seed the data dirs of a NEW cluster (--config) from a backup FILE",
                   cmd_snapshot_restore)
    restore.add_argument("file", help="a backup file")
    restore.add_argument("--name", action="append", default=[],
                         help="only this member (repeatable; default: every member)")

    endpoint = sub.add_parser("endpoint", help="per-endpoint checks").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(endpoint, "status", "status of every endpoint", cmd_endpoint_status)
    leaf(endpoint, "health", "health of every endpoint", cmd_endpoint_health)

    lease = sub.add_parser("lease", help="leases").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(lease, "grant", "grant a lease", cmd_lease_grant).add_argument(
        "ttl", type=int, help="time to live, seconds")
    leaf(lease, "revoke", "revoke a lease", cmd_lease_revoke).add_argument(
        "id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ttl = leaf(lease, "timetolive", "remaining time of a lease", cmd_lease_timetolive)
    ttl.add_argument("id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ttl.add_argument("--keys", action="store_true", help="also list the attached keys")
    leaf(lease, "list", "list leases", cmd_lease_list)
    ka = leaf(lease, "keep-alive", "keep a lease alive until Ctrl-C", cmd_lease_keepalive)
    ka.add_argument("id", type=_lease_arg, help="lease id (hex as printed, or decimal)")
    ka.add_argument("--once", action="store_true", help="renew once and exit")

    lock = leaf(sub, "lock", "hold a distributed lock: run CMD while holding it, or hold until "
                "Ctrl-C", cmd_lock)
    lock.add_argument("name", help="the lock's name (keys NAME/<lease id hex>, as etcdctl)")
    lock.add_argument("cmd", nargs="*", metavar="CMD",
                      help="command to run while holding the lock (after --; options of "
                      "`lock` go before NAME)")
    lock.add_argument("--ttl", type=int, default=10, help="session lease TTL, seconds")
    elect = leaf(sub, "elect", "campaign with PROPOSAL and lead until Ctrl-C; without "
                 "PROPOSAL, print each new leader", cmd_elect)
    elect.add_argument("name", help="the election's name (keys NAME/<lease id hex>)")
    elect.add_argument("proposal", nargs="?", default=None,
                       help="the value to lead with (none: observe)")
    elect.add_argument("--ttl", type=int, default=60, help="session lease TTL, seconds")

    config = sub.add_parser("config", help="service configuration").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    cget = leaf(config, "get", "a service's settings, or one setting's value", cmd_config_get)
    cget.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cget.add_argument("name", nargs="?", default=None, help="one setting (default: all)")
    cget.add_argument("--rev", type=int, default=0, help="as of this revision (0 = now)")
    cset = leaf(
        config,
        "set",
        "publish settings in one revision; VALUE is JSON, other text is taken as a string",
        cmd_config_set,
    )
    cset.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cset.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="settings to publish")
    cset.add_argument(
        "--delete", action="append", default=[], metavar="NAME", help="remove a setting"
    )
    cset.add_argument(
        "--expect-rev",
        type=int,
        default=None,
        help="publish only if the config did not change since this revision",
    )
    cwatch = leaf(config, "watch", "print each change of a service's config until Ctrl-C",
                  cmd_config_watch)
    cwatch.add_argument("service", help="the service (keys /config/SERVICE/...)")
    cwatch.add_argument("--rev", type=int, default=0, help="start at this revision (0 = now)")
    chist = leaf(config, "history", "earlier versions of a service's config", cmd_config_history)
    chist.add_argument("service", help="the service (keys /config/SERVICE/...)")
    chist.add_argument("name", nargs="?", default=None, help="one setting (default: all)")
    crb = leaf(config, "rollback", "make a service's config what it was at --rev",
               cmd_config_rollback)
    crb.add_argument("service", help="the service (keys /config/SERVICE/...)")
    crb.add_argument("--rev", type=int, required=True, help="the revision to return to")

    services = sub.add_parser("services", help="registered service instances").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    leaf(services, "list", "list instances", cmd_services_list).add_argument(
        "service", nargs="?", default=None, help="one service (default: all)"
    )
    leaf(
        services,
        "watch",
        "print the instances (ADDED), then every change (ADDED/UPDATED/REMOVED) until Ctrl-C",
        cmd_services_watch,
    ).add_argument("service", nargs="?", default=None, help="one service (default: all)")

    node = leaf(sub, "node", "run one node of the cluster in cluster.toml", cmd_node)
    node.add_argument("--name", required=True, help="this node's name in the configuration")
    node.add_argument("--join", action="store_true",
                      help="this node was just added to a running cluster with `member add`")
    dev = leaf(sub, "dev", "run a single-node development registry", cmd_dev)
    dev.add_argument("--data-dir", default="default.raftreg", help="data directory")
    dev.add_argument("--listen", default="127.0.0.1:2379", help="client address host:port")
    dev.add_argument("--http", default="127.0.0.1:2381",
                     help="JSON gateway and /metrics host:port ('' for none)")
    secret = leaf(sub, "secret", "create a cluster secret file (mode 0600) if it is missing",
                  cmd_secret)
    secret.add_argument("file", help="the file to create, e.g. cluster.secret")
    return parser


def _lease_arg(text: str) -> int:
    try:
        return parse_lease_id(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None
