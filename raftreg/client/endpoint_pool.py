"""`EndpointPool`: channels, endpoint ranking, connection waits and backoff for a multi-endpoint
grpc.aio client. Backend-neutral (nothing here knows a backend's messages); used by both the
raftreg client (`raftreg.client.raftreg_client`) and the etcd client (`raftreg.client.etcd`).

Contracts:
- One channel per endpoint, created lazily on the running loop; the pool is bound to that loop.
  Each channel has one connection object (the backend's stubs), built by `make`.
- `ordered()` lists endpoints best first: healthy ones in configured order, then those that
  failed within `failure_penalty` seconds, least recently failed first. `mark_failed` /
  `mark_ok` move an endpoint between the two groups. A client therefore sticks to one healthy
  endpoint (like etcd's clientv3 pinned endpoint) and moves on when it fails. Routing beyond
  that (e.g. raftreg's leader preference) is the client's.
- `connect(endpoint, limit)` returns once the channel is READY or raises `NotConnected`; when
  it raises, nothing was sent, so any call may be retried elsewhere.
- `backoff(attempt)` is exponential (base x 2^(attempt-1), capped) with 50% jitter.
- Channels are plain, or TLS when `credentials` is given; `interceptors` (e.g. the bearer token
  of `raftreg.client.security`) apply to every call on them.
- With a `diagnose` hook, a failed connection is explained: the hook runs in the background
  (at most one probe per endpoint at a time) and later `NotConnected` messages for that endpoint
  carry its answer (e.g. "requires TLS", "server certificate is not trusted") until the
  endpoint connects. Connecting never waits for the hook.
- `close()` closes every connection object (the optional `close` hook), then its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from raftreg.common.backoff import Backoff

C = TypeVar("C")


class NotConnected(Exception):
    """No READY connection to the endpoint: nothing was sent."""


DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class EndpointPool(Generic[C]):
    """Per-endpoint connection objects of type `C`, built by `make(endpoint, channel)` and
    closed by `close(conn)` (if given) before their channel is."""

    def __init__(
        self,
        endpoints: Sequence[str],
        make: Callable[[str, grpc.aio.Channel], C],
        *,
        close: Callable[[C], Awaitable[None]] | None = None,
        channel_options: Sequence[tuple[str, str | int]] = (),
        failure_penalty: float = 5.0,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[Any] = (),  # grpc.aio client interceptors
        diagnose: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self._credentials = credentials
        self._interceptors = list(interceptors)
        self._diagnose = diagnose
        self._diagnosis: dict[str, str] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._make = make
        self._close_conn = close
        self._options = [*DEFAULT_CHANNEL_OPTIONS, *channel_options]
        self._penalty = failure_penalty
        self._rng = random.Random()
        self._backoff = Backoff(base=backoff_base, max_delay=backoff_max, jitter="equal",
                                rng=self._rng)
        self._conns: dict[str, tuple[grpc.aio.Channel, C]] = {}
        self._failed_at: dict[str, float] = {}

    def conn(self, endpoint: str) -> C:
        """The connection object of `endpoint` (channel created on first use)."""
        entry = self._conns.get(endpoint)
        if entry is None:
            icpt = self._interceptors or None
            if self._credentials is None:
                ch = grpc.aio.insecure_channel(endpoint, options=self._options, interceptors=icpt)
            else:
                ch = grpc.aio.secure_channel(
                    endpoint, self._credentials, options=self._options, interceptors=icpt
                )
            entry = (ch, self._make(endpoint, ch))
            self._conns[endpoint] = entry
        return entry[1]

    def ordered(self) -> list[str]:
        """Endpoints to try, best first (see the module docstring)."""
        now = asyncio.get_running_loop().time()

        def rank(item: tuple[int, str]) -> tuple[float, int]:
            i, ep = item
            t = self._failed_at.get(ep)
            recent = t is not None and now - t < self._penalty
            return (t if recent and t is not None else -math.inf, i)

        return [ep for _, ep in sorted(enumerate(self.endpoints), key=rank)]

    def recently_failed(self, endpoint: str) -> bool:
        """Whether `endpoint` was marked failed within `failure_penalty` seconds."""
        t = self._failed_at.get(endpoint)
        return t is not None and asyncio.get_running_loop().time() - t < self._penalty

    def mark_failed(self, endpoint: str) -> None:
        self._failed_at[endpoint] = asyncio.get_running_loop().time()

    def mark_ok(self, endpoint: str) -> None:
        self._failed_at.pop(endpoint, None)

    def backoff(self, attempt: int) -> float:
        return self._backoff.delay(attempt)

    async def connect(self, endpoint: str, limit: float) -> None:
        """Return once `endpoint`'s channel is READY; raise `NotConnected` if it is failing
        or does not connect within `limit` seconds."""
        self.conn(endpoint)
        ch = self._conns[endpoint][0]
        state = ch.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            self._diagnosis.pop(endpoint, None)
            return
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise self._not_connected(endpoint, f"cannot connect to {endpoint}")

        async def settle() -> grpc.ChannelConnectivity:
            s: grpc.ChannelConnectivity = state
            while s in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
                await ch.wait_for_state_change(s)
                s = ch.get_state(try_to_connect=True)
            return s

        try:
            final = await asyncio.wait_for(settle(), max(limit, 0.001))
        except TimeoutError:
            raise self._not_connected(
                endpoint, f"no connection to {endpoint} within {limit:.1f}s"
            ) from None
        if final is not grpc.ChannelConnectivity.READY:
            raise self._not_connected(endpoint, f"cannot connect to {endpoint}")
        self._diagnosis.pop(endpoint, None)

    def _not_connected(self, endpoint: str, message: str) -> NotConnected:
        """The error for a failed connection, with the last diagnosis of `endpoint` (and a
        new probe started in the background, see the module docstring)."""
        if self._diagnose is not None:
            probe = self._probes.get(endpoint)
            if probe is None or probe.done():
                self._probes[endpoint] = asyncio.get_running_loop().create_task(
                    self._run_probe(endpoint, self._diagnose)
                )
        why = self._diagnosis.get(endpoint)
        return NotConnected(f"{message}: {why}" if why else message)

    async def _run_probe(
        self, endpoint: str, diagnose: Callable[[str], Awaitable[str | None]]
    ) -> None:
        why = await diagnose(endpoint)
        if why:
            self._diagnosis[endpoint] = why
        else:
            self._diagnosis.pop(endpoint, None)

    async def close(self) -> None:
        probes, self._probes = list(self._probes.values()), {}
        for t in probes:
            t.cancel()
        for t in probes:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        conns, self._conns = list(self._conns.values()), {}
        for ch, c in conns:
            if self._close_conn is not None:
                await self._close_conn(c)
            await ch.close(None)
