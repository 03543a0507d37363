"""`LeaseKeeper`: keeps a process's leases alive over ONE keepalive stream.

Contracts:
- One stream for every kept lease. It comes from the client's `open_keepalive_stream()` when
  the client has one (the gRPC client: one LeaseKeepAlive bidi call, to the leader when known;
  the in-memory client); any other `RegistryClient` is driven through
  `lease_keepalive_once` calls instead.
- Each lease is renewed about every TTL/3 (x a uniform jitter of +-10%), counted from the send
  time of its last acknowledged renewal; a new lease and every lease after a reconnect is
  renewed at once. Renewals due together go in one `send` (raftreg's server renews them with
  one message, see `raftreg.common.keepalive_wire`), and whenever one is due, the leases due
  within `coalesce` x their renew interval join it early (default 10%), so a process holding
  thousands of leases sends a few large renewals instead of thousands of small ones. At most
  one renewal per lease is in flight; one unanswered for longer than `response_timeout`
  (default: the lease's renew interval) counts as a broken stream.
- On stream failure the keeper reconnects (the gRPC client then prefers another endpoint) with
  exponential backoff and jitter, and renews everything at once.
- Loss: `on_lost(lease_id)` is called exactly once, and the lease is no longer renewed, when the
  server answers TTL 0 (expired or revoked), or when no renewal was acknowledged for longer
  than the TTL: a lease is never assumed alive past `send time of the last acknowledged
  renewal + the TTL that renewal confirmed` (for a lease given to `keep`, past
  `now + alive_for` until its first acknowledgement). Callbacks run on the event loop and must
  not block; exceptions they raise are logged and ignored.
- `forget(id)` stops renewing without calling `on_lost`; `close()` stops everything (no
  callbacks). A keeper is bound to the event loop it was first used on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from raftreg.common.backoff import Backoff
from raftreg.common.clock import Clock, LoopClock
from raftreg.errors import ClientClosed, InvalidArgument, RegistryError

if TYPE_CHECKING:
    from raftreg.client.protocol import RegistryClient

log = logging.getLogger("raftreg.client.keepalive")

OnLost = Callable[[int], None]
OnRenew = Callable[[int, int], None]


class KeepAliveStream(Protocol):
    """One open keepalive stream. `send` renews the leases named, never blocks; `recv` returns
    the next answer (lease id, TTL; TTL 0 = lease gone), one per lease, and raises a
    `RegistryError` once the stream failed or ended. Answers name their lease and may come in
    any order."""

    @property
    def endpoint(self) -> str: ...

    def send(self, lease_ids: Sequence[int]) -> None: ...

    async def recv(self) -> tuple[int, int]: ...

    async def close(self) -> None: ...


@runtime_checkable
class KeepAliveSource(Protocol):
    async def open_keepalive_stream(self) -> KeepAliveStream:
        """A new stream; raises a `RegistryError` (usually `Unavailable`) if none can be
        opened now."""
        ...


class UnaryKeepAliveStream:
    """A `KeepAliveStream` over any `RegistryClient`: each send is a `lease_keepalive_once`
    call. Fails (like a broken stream) on the first call that raises."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self._answers: asyncio.Queue[tuple[int, int] | RegistryError] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return ",".join(self._client.endpoints)

    def send(self, lease_ids: Sequence[int]) -> None:
        for lease_id in lease_ids:
            self._send(lease_id)

    def _send(self, lease_id: int) -> None:
        async def one() -> None:
            try:
                ttl = await self._client.lease_keepalive_once(lease_id)
            except RegistryError as e:
                self._answers.put_nowait(e)
            else:
                self._answers.put_nowait((lease_id, ttl))

        t = asyncio.get_running_loop().create_task(one())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def recv(self) -> tuple[int, int]:
        item = await self._answers.get()
        if isinstance(item, RegistryError):
            raise item
        return item

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()


@dataclass(slots=True, eq=False)
class _Kept:
    id: int
    ttl: int
    on_lost: OnLost | None
    on_renew: OnRenew | None
    alive_until: float
    next_send: float
    inflight: collections.deque[float] = field(default_factory=collections.deque)


class LeaseKeeper:
    """Keeps leases alive; see the module docstring for the contract.

    `client` is a `RegistryClient` (with or without `open_keepalive_stream`). `clock` drives the
    renewal and loss timers (default: the loop's clock; tests pass a `ManualClock`); reconnect
    backoff always uses real time.
    """

    def __init__(
        self,
        client: RegistryClient | KeepAliveSource,
        *,
        clock: Clock | None = None,
        renew_fraction: float = 1 / 3,
        jitter: float = 0.1,
        coalesce: float = 0.1,
        backoff_base: float = 0.05,
        backoff_max: float = 0.5,
        response_timeout: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < renew_fraction < 1 or not 0 <= jitter < 1 or not 0 <= coalesce < 1:
            raise InvalidArgument(
                "renew_fraction must be in (0, 1), jitter and coalesce in [0, 1)")
        self._client = client
        self._clock: Clock = clock or LoopClock()
        self._fraction = renew_fraction
        self._jitter = jitter
        self._coalesce = coalesce
        self._response_timeout = response_timeout
        self._rng = rng or random.Random()
        self._retry = Backoff(base=backoff_base, max_delay=backoff_max, jitter="equal",
                              rng=self._rng)
        self._leases: dict[int, _Kept] = {}
        self._stream: KeepAliveStream | None = None
        self._wake = asyncio.Event()
        self._has_leases = asyncio.Event()
        self._broken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.streams_opened = 0
        self.renewals = 0

    # ------------------------------------------------------------------ public API

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the open stream (None while not connected)."""
        return None if self._stream is None else self._stream.endpoint

    def kept(self) -> frozenset[int]:
        """Ids of the leases being kept alive."""
        return frozenset(self._leases)

    def alive_until(self, lease_id: int) -> float | None:
        """The clock time up to which the lease is known alive (None if not kept)."""
        k = self._leases.get(lease_id)
        return None if k is None else k.alive_until

    def keep(
        self,
        lease_id: int,
        ttl: int,
        on_lost: OnLost | None = None,
        *,
        on_renew: OnRenew | None = None,
        alive_for: float | None = None,
    ) -> None:
        """Keep `lease_id` (granted with `ttl` seconds) alive; renews it at once. `alive_for`
        (default `ttl`) is how long from now the caller vouches the lease is alive, e.g. the
        remaining TTL. `on_renew(id, ttl)` is called after each acknowledged renewal. Keeping
        an already kept lease replaces its callbacks. Must be called on the event loop."""
        if self._closed:
            raise ClientClosed("lease keeper is closed")
        if lease_id <= 0 or ttl <= 0:
            raise InvalidArgument("lease id and ttl must be positive")
        now = self._clock.now()
        old = self._leases.get(lease_id)
        if old is not None:
            old.on_lost, old.on_renew = on_lost, on_renew
            return
        self._leases[lease_id] = _Kept(
            lease_id, ttl, on_lost, on_renew, now + (ttl if alive_for is None else alive_for), now
        )
        self._start()
        self._has_leases.set()
        self._wake.set()

    def forget(self, lease_id: int) -> None:
        """Stop renewing `lease_id` (no callback). Unknown ids are ignored."""
        if self._leases.pop(lease_id, None) is not None:
            self._wake.set()

    async def grant_and_keep(
        self, ttl: int, on_lost: OnLost | None = None, *, on_renew: OnRenew | None = None
    ) -> int:
        """Grant a lease of `ttl` seconds and keep it alive; returns its id. The lease counts
        as alive from the grant's send time for the granted TTL."""
        grant = getattr(self._client, "lease_grant", None)
        if grant is None:
            raise InvalidArgument("this keeper's client cannot grant leases")
        sent = self._clock.now()
        r = await grant(ttl)
        self.keep(r.id, r.ttl, on_lost, on_renew=on_renew,
                  alive_for=r.ttl - (self._clock.now() - sent))
        return int(r.id)

    async def close(self) -> None:
        """Stop renewing everything and close the stream (no callbacks). Idempotent."""
        self._closed = True
        self._leases.clear()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a cancelled caller stays so
        st, self._stream = self._stream, None
        if st is not None:
            await st.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._connection()), loop.create_task(self._schedule())]

    def _renew_interval(self, k: _Kept) -> float:
        return k.ttl * self._fraction

    def _timeout(self, k: _Kept) -> float:
        return self._response_timeout or self._renew_interval(k)

    def _lose(self, k: _Kept, reason: str) -> None:
        if self._leases.get(k.id) is not k:
            return
        del self._leases[k.id]
        log.warning("lease %016x lost: %s", k.id, reason)
        if k.on_lost is not None:
            try:
                k.on_lost(k.id)
            except Exception:
                log.exception("on_lost callback for lease %016x failed", k.id)

    def _on_answer(self, lease_id: int, ttl: int) -> None:
        k = self._leases.get(lease_id)
        if k is None or not k.inflight:
            return  # forgotten, or an answer from an older stream
        sent = k.inflight.popleft()
        if ttl <= 0:
            self._lose(k, "the server answered TTL 0 (expired or revoked)")
            return
        if sent + ttl <= self._clock.now():
            self._lose(k, "renewal acknowledged too late")
            return
        self.renewals += 1
        k.ttl = ttl
        k.alive_until = max(k.alive_until, sent + ttl)
        j = self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        k.next_send = sent + self._renew_interval(k) * j
        self._wake.set()
        if k.on_renew is not None:
            try:
                k.on_renew(k.id, ttl)
            except Exception:
                log.exception("on_renew callback for lease %016x failed", k.id)

    async def _open(self) -> KeepAliveStream:
        if isinstance(self._client, KeepAliveSource):
            return await self._client.open_keepalive_stream()
        return UnaryKeepAliveStream(self._client)

    async def _connection(self) -> None:
        """Open the stream, read answers until it fails, back off, reopen; forever."""
        attempt = 0
        while not self._closed:
            if not self._leases:
                self._has_leases.clear()
                await self._has_leases.wait()
                continue
            try:
                st = await self._open()
            except ClientClosed:
                log.info("keepalive: the client is closed; nothing is renewed any more")
                return  # the leases run out (on_lost) like any lease no one renews
            except RegistryError as e:
                attempt += 1
                log.info("keepalive: cannot open a stream (%s); retrying", e)
                await asyncio.sleep(self._backoff(attempt))
                continue
            self._stream = st
            self.streams_opened += 1
            self._broken.clear()
            now = self._clock.now()
            for k in self._leases.values():
                k.inflight.clear()
                k.next_send = now
            self._wake.set()
            answered = False

            async def read(st: KeepAliveStream = st) -> None:
                nonlocal answered
                while True:
                    lease_id, ttl = await st.recv()
                    answered = True
                    self._on_answer(lease_id, ttl)

            reader = asyncio.get_running_loop().create_task(read())
            broken = asyncio.get_running_loop().create_task(self._broken.wait())
            try:
                await asyncio.wait({reader, broken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (reader, broken):
                    t.cancel()
                # gather, not suppress(CancelledError): a cancellation of THIS task goes on.
                await asyncio.gather(reader, broken, return_exceptions=True)
                self._stream = None
                for k in self._leases.values():
                    k.inflight.clear()
                await st.close()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                exc = reader.exception()
                if not isinstance(exc, RegistryError):
                    log.error("keepalive reader failed", exc_info=exc)
                log.info("keepalive stream to %s failed (%s); reconnecting", st.endpoint, exc)
            else:
                log.info("keepalive stream to %s: renewal unanswered; reconnecting", st.endpoint)
            attempt = 1 if answered else attempt + 1
            self._wake.set()
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return self._retry.delay(attempt)

    async def _sleep_until(self, t: float) -> None:
        # The time left is read when the sleep starts, not when it was decided: the clock may
        # have moved in between (a test's ManualClock.advance() can run before this task does,
        # and a sleep measured from the older time would then outlast its deadline).
        await self._clock.sleep(t - self._clock.now())

    async def _schedule(self) -> None:
        """Send due renewals, detect losses and unanswered renewals; sleep until the next
        deadline or until something changes."""
        while not self._closed:
            now = self._clock.now()
            for k in list(self._leases.values()):
                if k.alive_until <= now:
                    self._lose(k, f"no renewal acknowledged within its TTL ({k.ttl}s)")
            st = self._stream
            wake_at = math.inf
            connected = st is not None and not self._broken.is_set()
            any_due = connected and any(
                not k.inflight and k.next_send <= now for k in self._leases.values())
            sending = []
            for k in list(self._leases.values()):
                wake_at = min(wake_at, k.alive_until)
                if not connected:
                    continue
                if k.inflight:
                    due = k.inflight[0] + self._timeout(k)
                    if due <= now:
                        self._broken.set()
                    else:
                        wake_at = min(wake_at, due)
                elif k.next_send <= now or (
                    any_due and k.next_send <= now + self._coalesce * self._renew_interval(k)
                ):
                    k.inflight.append(now)
                    sending.append(k.id)
                    wake_at = min(wake_at, now + self._timeout(k))
                else:
                    wake_at = min(wake_at, k.next_send)
            if sending and st is not None:
                st.send(sending)
            self._wake.clear()
            if wake_at == math.inf:
                await self._wake.wait()
                continue
            waiter = asyncio.get_running_loop().create_task(self._wake.wait())
            sleeper = asyncio.get_running_loop().create_task(self._sleep_until(wake_at))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()
