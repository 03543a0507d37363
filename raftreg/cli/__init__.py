"""The `raftreg` command, in the spirit of etcdctl.

Client commands (put, get, del, txn, watch, compaction, member, endpoint, lease, config,
services) talk to the registry through a `RegistryClient`; `node` and `dev` run a server
process. Output formats: `simple` (etcdctl-like lines, the default), `table` (aligned columns)
and `json` (the response with its header; keys and values base64-encoded as etcdctl does).

`config get|set|watch|history|rollback` work on a service's settings through
`raftreg.configcenter` (values are JSON; `config set` takes NAME=VALUE where VALUE is JSON, or
else the text itself as a string, except that text starting with '"', '[' or '{' must be valid
JSON; every `config set` is one revision). `services list|watch` show the instances under
`/services/` (`raftreg.discovery.instance`); a malformed registration is a warning line on
stderr, never a failure. Commands without a table of their own print `simple` lines for
`-w table`.

Contract: `main()` returns the exit status. A `RegistryError` or an OS-level failure prints one
line `Error: <message>` to stderr and returns 1; bad usage returns 2 (argparse); when no
endpoint accepts a connection within --dial-timeout (2 s) it prints one line naming each
endpoint and why, with how to start a registry, and returns 3. --command-timeout (5 s) bounds
each request with its retries. Every global flag has a RAFTREG_* variable (the flag wins).
Without --endpoints or RAFTREG_ENDPOINTS, a `raftreg dev` running in this directory (its
`default.raftreg/dev.json`) is used before the --config file's cluster. The long-running
commands (`watch`, `lease keep-alive`, `config watch`, `services watch`) run until Ctrl-C and
then exit 0; `watch` and `config watch` exit 1 with an error line when the watch is compacted
(`services watch` re-lists instead), `lease keep-alive` when the lease is lost.

`lock NAME [CMD ...]` and `elect NAME [PROPOSAL]` are etcdctl's, on `raftreg.concurrency`
(same key layout, so they exclude etcdctl's own on an etcd backend). `lock` prints its key once
it holds the lock, then runs CMD (with RAFTREG_LOCK_KEY/RAFTREG_LOCK_REV, and etcdctl's
ETCD_LOCK_KEY/ETCD_LOCK_REV, in its environment) and exits with CMD's status, or holds until
Ctrl-C; the lock is released only after CMD has ended. If the session's lease is lost meanwhile
it terminates CMD and exits 1. `elect NAME PROPOSAL` campaigns, prints the leader's key and
value once elected and leads until Ctrl-C (exit 1 if the lease is lost); `elect NAME` prints
the leader and every change of leader until Ctrl-C.

This package owns the `raftreg` command (`[project.scripts] raftreg = "raftreg.cli:main"`, and
`python -m raftreg.cli`), one module per command group as in etcdctl's `ctlv3/command/`:
`kv` (put, get, del, txn, compaction), `watch`, `lease`, `cluster` (member, endpoint),
`snapshot`, `concurrency` (lock, elect), `config`, `services` and `node` (node, dev, secret).
Beneath them: `txn` (the request grammar of put/get/del and txn lines), `output` (the command
context `_Ctx` and the output formats) and `connect` (client factories, `raftreg dev`
discovery, the dial check); above them `parser` (the argparse tree) and `entry` (`run`,
`main`). Imports point down only: entry -> parser -> command modules -> connect -> output,
and command modules -> txn; `txn` and `output` import nothing from the package.
"""

from __future__ import annotations

from raftreg.cli.config import parse_setting, parse_setting_value
from raftreg.cli.connect import running_dev
from raftreg.cli.entry import main, run
from raftreg.cli.output import ClientFactory, format_table, result_json, simple_lines
from raftreg.cli.parser import build_parser
from raftreg.cli.txn import parse_compare, parse_lease_id, parse_op, parse_txn, read_txn

__all__ = [
    "ClientFactory",
    "build_parser",
    "format_table",
    "main",
    "parse_compare",
    "parse_lease_id",
    "parse_op",
    "parse_setting",
    "parse_setting_value",
    "parse_txn",
    "read_txn",
    "result_json",
    "run",
    "running_dev",
    "simple_lines",
]
