"""Reaching the registry: the client factories (the default one, and `_secured_factory` with
TLS and token from the global flags or RAFTREG_* variables, for either backend), the guard of
commands that need the raftreg backend, the discovery of a `raftreg dev` running in this
directory (its `default.raftreg/dev.json` marker), and the dial check: when no endpoint
accepts a TCP connection within --dial-timeout the command fails with `_CannotConnect`, which
`run` reports with exit status 3 (`EXIT_CANNOT_CONNECT`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from raftreg.cli.output import ClientFactory, Command, _Ctx
from raftreg.client import connect
from raftreg.client.protocol import RegistryClient
from raftreg.client.raftreg_client import GrpcRegistryClient
from raftreg.client.security import endpoints_want_tls
from raftreg.config import split_hostport
from raftreg.errors import InvalidArgument, RegistryError


def _default_factory(endpoints: Sequence[str], timeout: float) -> RegistryClient:
    return GrpcRegistryClient(endpoints, timeout=timeout, connect_timeout=min(3.0, timeout))


def _secured_factory(backend: str, ns: argparse.Namespace) -> ClientFactory:
    """The client factory of `backend`: `raftreg.client.connect` with TLS / token from
    --cacert, --cert, --key, --token (else RAFTREG_CACERT, RAFTREG_CERT, RAFTREG_KEY,
    RAFTREG_TOKEN); https:// endpoints and any certificate file imply TLS
    (raftreg.client.security). Each connection attempt is bounded by --dial-timeout, each
    command's requests with their retries by --command-timeout."""
    dial = ns.dial_timeout
    tls = endpoints_want_tls(ns.endpoints or None, config_path=ns.config, env=os.environ)

    def factory(endpoints: Sequence[str], timeout: float) -> RegistryClient:
        return connect(
            list(endpoints), backend=backend, config_path=ns.config, timeout=timeout,
            connect_timeout=min(dial, timeout), retry_budget=timeout, tls=tls,
            ca_file=ns.tls_cacert, cert_file=ns.tls_cert, key_file=ns.tls_key,
            token=ns.auth_token,
        )

    return factory


def _raftreg_only(client: RegistryClient, what: str) -> GrpcRegistryClient:
    if not isinstance(client, GrpcRegistryClient):
        raise InvalidArgument(f"{what} needs the raftreg backend (for etcd, use etcdctl/etcdutl)")
    return client


DEV_DATA_DIR = "default.raftreg"
_DEV_MARKER = "dev.json"  # in the data dir while `raftreg dev` runs: {"pid", "client"}


def running_dev(data_dir: str | Path = DEV_DATA_DIR) -> str | None:
    """The client address of a `raftreg dev` running with `data_dir` (None: none is)."""
    try:
        doc = json.loads((Path(data_dir) / _DEV_MARKER).read_text())
        pid, client = int(doc["pid"]), str(doc["client"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return client


class _CannotConnect(Exception):
    """No endpoint accepted a connection within the dial timeout (exit status 3)."""


EXIT_CANNOT_CONNECT = 3
# Commands that report on each endpoint themselves, reachable or not.
_NO_DIAL_CHECK = frozenset({"endpoint"})


async def _dial_check(endpoints: Sequence[str], timeout: float) -> None:
    """Return once one endpoint accepts a TCP connection; `_CannotConnect` if none does within
    `timeout`. TLS and auth are the client's business: a refusal there is an error (exit 1)
    with the client's explanation, not "cannot connect"."""
    why = {ep: f"no answer within {timeout:g}s (--dial-timeout)" for ep in endpoints}

    async def dial(ep: str) -> None:
        try:
            host, port = split_hostport(ep.split("://", 1)[-1])
            _, writer = await asyncio.open_connection(host, port)
        except (OSError, RegistryError) as e:
            errno = getattr(e, "errno", None)
            why[ep] = os.strerror(errno).lower() if errno else str(e)
            raise
        writer.close()

    tasks = [asyncio.ensure_future(dial(ep)) for ep in endpoints]
    try:
        async with asyncio.timeout(timeout):
            for next_done in asyncio.as_completed(tasks):
                with contextlib.suppress(OSError, RegistryError):
                    await next_done
                    return
    except TimeoutError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    tried = "; ".join(f"{ep}: {reason}" for ep, reason in why.items())
    raise _CannotConnect(
        f"cannot connect to the registry ({tried}). Start the cluster of cluster.toml with "
        "scripts/start-cluster.sh, or a development registry with `raftreg dev`; "
        "--endpoints or RAFTREG_ENDPOINTS name another one.")


async def _run_client_command(ns: argparse.Namespace, ctx: _Ctx, dial_check: bool) -> int:
    func: Command = ns.func
    if dial_check and ns.command not in _NO_DIAL_CHECK:
        await _dial_check(ctx.endpoints, ns.dial_timeout)
    async with ctx.factory(ctx.endpoints, ctx.timeout) as client:
        return await func(client, ns, ctx)
