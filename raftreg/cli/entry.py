"""The entry points: `run` parses the command line, picks the endpoints and the backend
(--endpoints / RAFTREG_ENDPOINTS, else a `raftreg dev` running in this directory, else the
--config file's cluster), runs the command and maps its failures to exit statuses: 1 for a
`RegistryError` or an OS-level failure (one `Error: ...` line on stderr), 2 for bad usage, 3
when no endpoint can be reached, 130 for Ctrl-C outside a long-running command. `main` is
`run` on `sys.argv`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from raftreg.cli.connect import (
    EXIT_CANNOT_CONNECT,
    _CannotConnect,
    _default_factory,
    _run_client_command,
    _secured_factory,
    running_dev,
)
from raftreg.cli.output import ClientFactory, _Ctx
from raftreg.cli.parser import _env, build_parser
from raftreg.client.backend_choice import select_backend
from raftreg.client.endpoints import normalize_endpoints
from raftreg.errors import InvalidArgument, RegistryError

_SERVER_COMMANDS = frozenset({"node", "dev", "secret"})
_LOCAL_SUBCOMMANDS = frozenset({("snapshot", "status"), ("snapshot", "restore")})


def _is_local(ns: argparse.Namespace) -> bool:
    """Commands that run in this process without a client (servers, offline file tools)."""
    return ns.command in _SERVER_COMMANDS or (
        (ns.command, getattr(ns, "subcommand", None)) in _LOCAL_SUBCOMMANDS)


def run(
    argv: Sequence[str],
    *,
    client_factory: ClientFactory = _default_factory,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`main` with injectable client factory and streams (for tests and embedding)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if ns.command is None:
        parser.print_help(err)
        return 2
    try:
        if ns.timeout <= 0:
            raise InvalidArgument("--timeout must be positive")
        factory = client_factory
        if _is_local(ns):
            endpoints = (
                list(normalize_endpoints(e for e in ns.endpoints.split(",") if e.strip()))
                if ns.endpoints
                else []
            )
        else:
            # The backend follows configuration: an etcd:// endpoint, RAFTREG_BACKEND, or the
            # [registry] table of --config (raftreg.client.backend_choice).
            sel = select_backend(ns.endpoints or None, config_path=ns.config)
            endpoints = list(sel.endpoints)
            dev = None if ns.endpoints or _env("RAFTREG_ENDPOINTS", None) else running_dev()
            if dev is not None and sel.backend == "raftreg":
                endpoints = [dev]  # what `raftreg dev` in this directory serves
            if client_factory is _default_factory:
                factory = _secured_factory(sel.backend, ns)
        ctx = _Ctx(
            fmt=ns.write_out,
            endpoints=endpoints,
            timeout=ns.timeout,
            factory=factory,
            out=out,
            err=err,
            stdin=stdin or sys.stdin,
        )
        if _is_local(ns):
            server_func: Callable[[argparse.Namespace, _Ctx], int] = ns.func
            return server_func(ns, ctx)
        # over the network only: an injected factory (tests, embedding) has no endpoints to dial
        return asyncio.run(_run_client_command(ns, ctx, client_factory is _default_factory))
    except _CannotConnect as e:
        err.write(f"Error: {e}\n")
        return EXIT_CANNOT_CONNECT
    except RegistryError as e:
        err.write(f"Error: {e}\n")
        return 1
    except OSError as e:
        err.write(f"Error: {e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
