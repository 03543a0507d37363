"""`PooledClient`: what the two grpc.aio `RegistryClient`s (raftreg's `GrpcRegistryClient`,
`raftreg.client.etcd.EtcdRegistryClient`) share around their own calls.

It owns: the `EndpointPool` (channels, ranking, failure marks, connection waits, backoff), the
shared watch stream (`raftreg.client.watch_mux.WatchMux`, fed by the backend's
`WatchWire`), the one `LeaseKeeper` and its `KeepAliveCall` streams, the one call loop
(`_call`: routing hook, failover, retries within the budget, per-attempt deadlines, the
write-safety rule) and the lifecycle (`close`, `async with`). A backend owns its messages:
its calls, their conversion, its error mapping (`_rpc_error`), where a call goes
(`_pick_endpoint`) and whether its writes carry request identities (`identified_writes`).

Contracts:
- `_mark_failed(endpoint)` is how every shared mechanism reports a failed endpoint (a backend
  may extend it, e.g. to forget a leader); answers report it healthy through the pool.
- A failed keepalive stream marks its endpoint failed unless the client is closed, so the
  keeper's next stream goes elsewhere.
- After `close()` every call raises `FailedPrecondition`; watches end and the keeper stops.
- Retries: after `Unavailable` or `DeadlineExceeded` only, on the next endpoint, with the
  pool's backoff. A write is retried after an attempt that may have applied (anything but
  `NotApplied`) only if the backend's writes carry request identities (raftreg's do, so the
  store applies a retry at most once); it then raises `OutcomeUnknown` if the budget runs out.
  Without identities (etcd) such a write raises `OutcomeUnknown` at once: a retry could apply
  it twice. A write that fails with every attempt refused raises `NotApplied`.
- Time is `clock` (default: the loop's): every call's budget, per-attempt deadline and retry
  pause are measured on it, so tests drive retries with a `SteppingClock` instead of racing
  real budgets. A retry starts only if, after its pause, at least `min(timeout, budget / 10)`
  of the budget is left: an attempt with a sliver of a deadline cannot succeed, and for a
  write it would turn a clean refusal into an unknown outcome.
- `security` (`raftreg.client.security.ClientSecurity`) decides every channel's TLS and the
  metadata of every call (the bearer token); its files are read when the client is made, so
  a bad path fails the constructor with `InvalidArgument`. Failed connections are explained by
  its `diagnose` (see `EndpointPool`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Generic, Literal, Self, TypeVar

import grpc.aio
from google.protobuf.message import Message

from raftreg import errors as E
from raftreg.client.bidi import BidiCall, KeepAliveCall
from raftreg.client.endpoint_pool import EndpointPool, NotConnected
from raftreg.client.keepalive import KeepAliveStream, LeaseKeeper
from raftreg.client.protocol import KeyLike, resolve_range
from raftreg.client.resumable_watch import Watch, WatchFilter, WatchOptions
from raftreg.client.security import ClientSecurity
from raftreg.client.watch_mux import WatchMux, WatchWire
from raftreg.common.clock import Clock, LoopClock

C = TypeVar("C")
T = TypeVar("T")
Route = Literal["leader", "any"]


class PooledClient(Generic[C]):
    """The shared part of a pooled client; `C` is the backend's per-endpoint connection object.
    Subclasses validate their arguments, then call `__init__`, and implement
    `open_keepalive_stream` (endpoint choice) with `_keepalive_call`."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        make_conn: Callable[[str, grpc.aio.Channel], C],
        close_conn: Callable[[C], Awaitable[None]] | None = None,
        watch_wire: WatchWire[C],
        timeout: float,
        connect_timeout: float,
        retry_budget: float | None,
        backoff_base: float,
        backoff_max: float,
        failure_penalty: float,
        channel_options: Sequence[tuple[str, str | int]],
        security: ClientSecurity | None = None,
        clock: Clock | None = None,
    ) -> None:
        sec = security or ClientSecurity()
        self._clock: Clock = clock or LoopClock()
        self._security = sec
        self._endpoints = endpoints
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._budget = 2 * timeout if retry_budget is None else retry_budget
        self._backoff_base = backoff_base
        self._pool: EndpointPool[C] = EndpointPool(
            endpoints,
            make_conn,
            close=close_conn,
            channel_options=channel_options,
            failure_penalty=failure_penalty,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            credentials=sec.channel_credentials(),
            interceptors=sec.interceptors(),
            diagnose=sec.diagnose,
        )
        self._watch_wire = watch_wire
        self._watch_mux: WatchMux[C] | None = None
        self._keeper: LeaseKeeper | None = None
        self._closed = False

    # --- properties ------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def retry_budget(self) -> float:
        return self._budget

    @property
    def security(self) -> ClientSecurity:
        """The TLS / token settings of this client's channels."""
        return self._security

    # --- leases ----------------------------------------------------------------------------

    async def open_keepalive_stream(self) -> KeepAliveStream:
        """A keepalive stream for `LeaseKeeper`; raises `Unavailable` if none can be opened."""
        raise NotImplementedError

    def keepalive_manager(self) -> LeaseKeeper:
        """This client's one `LeaseKeeper` (one stream for all leases; closed by `close()`)."""
        if self._closed:
            raise E.ClientClosed("client is closed")
        if self._keeper is None:
            self._keeper = LeaseKeeper(self, backoff_base=self._backoff_base)
        return self._keeper

    def _keepalive_call(
        self,
        endpoint: str,
        call: BidiCall,
        request: Callable[..., Message],
        response: type[Message],
        error: Callable[[grpc.aio.AioRpcError], E.RegistryError],
        *,
        batches: bool | None = None,
    ) -> KeepAliveCall:
        """A `KeepAliveCall` over `call` (already opened to `endpoint`) that reports its
        endpoint's health to this client; `batches` as `KeepAliveCall`'s."""

        def failed(ep: str) -> None:
            if not self._closed:
                self._mark_failed(ep)

        return KeepAliveCall(
            call, endpoint, request=request, response=response, error=error,
            on_answer=self._pool.mark_ok, on_failure=failed, batches=batches,
        )

    # --- watches ---------------------------------------------------------------------------

    async def watch(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike = b"",
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter | int] = (),
        progress_notify: bool = False,
    ) -> Watch:
        if self._closed:
            raise E.ClientClosed("client is closed")
        k, end = resolve_range(key, range_end, prefix)
        options = WatchOptions.make(
            k,
            end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )
        if self._watch_mux is None:
            self._watch_mux = WatchMux(
                self._watch_wire,
                self._pool,
                connect_timeout=self._connect_timeout,
                mark_failed=self._mark_failed,
                is_closed=lambda: self._closed,
            )
        return await self._watch_mux.watch(options, self._budget)

    async def request_progress(self) -> None:
        if self._closed:
            raise E.ClientClosed("client is closed")
        if self._watch_mux is not None:
            self._watch_mux.request_progress()

    @property
    def watch_endpoint(self) -> str | None:
        """The endpoint the shared watch stream is connected to (None when not connected)."""
        return None if self._watch_mux is None else self._watch_mux.endpoint

    # --- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.close()
        mux, self._watch_mux = self._watch_mux, None
        if mux is not None:
            await mux.close()
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the call loop ---------------------------------------------------------------------

    #: Whether this backend's writes carry request identities that make a retry apply at most
    #: once (see the module docstring's "Retries").
    identified_writes = False

    def _rpc_error(self, e: grpc.aio.AioRpcError) -> E.RegistryError:
        """The backend's one mapping from a failed call to `raftreg.errors`."""
        raise NotImplementedError

    async def _pick_endpoint(self, route: Route, deadline: float) -> str:
        """Where the next attempt of a call routed `route` goes (default: the best endpoint)."""
        return self._pool.ordered()[0]

    async def _call(
        self,
        fn: Callable[[C, float], Awaitable[T]],
        what: str,
        *,
        route: Route = "any",
        write: bool = False,
        endpoint: str | None = None,
    ) -> T:
        """Run `fn(conn, per_attempt_timeout)` with routing, failover and retries (see the
        module docstring). With `endpoint` given, exactly one attempt is made against it.
        `fn` raises a `RegistryError` of its own for a stream that ended without an answer
        (`Unavailable`, or `NotApplied` when nothing can have been applied)."""
        if self._closed:
            raise E.ClientClosed("client is closed")
        deadline = self._call_deadline()
        maybe_applied = False
        attempts = 0
        while True:
            attempts += 1
            ep = endpoint or await self._pick_endpoint(route, deadline)
            try:
                await self._pool.connect(ep, self._connect_limit(deadline))
                result = await fn(self._pool.conn(ep), self._attempt_timeout(deadline))
            except NotConnected as f:  # nothing was sent
                err: E.RegistryError = E.NotApplied(str(f))
            except grpc.aio.AioRpcError as e:
                err = self._rpc_error(e)
            except E.RegistryError as own:  # a stream's end, or an operation's own error
                err = own
            else:
                self._pool.mark_ok(ep)
                return result
            if not retryable(err):
                raise err from None
            last = err
            self._mark_failed(ep)
            if write and not isinstance(err, E.NotApplied):
                if not self.identified_writes:
                    raise E.OutcomeUnknown(
                        f"{what}: outcome unknown ({err}); not retried, as the server cannot "
                        "tell a retried write from a new one"
                    ) from None
                maybe_applied = True
            if endpoint is not None or not await self._pause_before_retry(attempts, deadline):
                break
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if maybe_applied:
            raise E.OutcomeUnknown(f"{what}: outcome unknown after {tries}; last error: {last}")
        raise type(last)(f"{what} failed after {tries}; last error: {last}")

    # --- internals -------------------------------------------------------------------------

    def _mark_failed(self, endpoint: str) -> None:
        """Report `endpoint` failed (see the module docstring)."""
        self._pool.mark_failed(endpoint)

    def _call_deadline(self) -> float:
        """When a call that starts now must end (on `clock`)."""
        return self._clock.now() + self._budget

    def _attempt_timeout(self, deadline: float) -> float:
        """The per-attempt deadline: `timeout`, cut to what is left of the budget."""
        left = deadline - self._clock.now()
        return max(min(self._timeout, left), 0.001)

    def _connect_limit(self, deadline: float) -> float:
        """How long an attempt may wait for its connection."""
        return min(self._connect_timeout, max(deadline - self._clock.now(), 0))

    async def _pause_before_retry(self, attempts: int, deadline: float) -> bool:
        """Sleep the backoff after `attempts` failed attempts and return True, or return False
        at once when the next attempt would not have `min(timeout, budget / 10)` left."""
        delay = self._pool.backoff(attempts)
        floor = min(self._timeout, self._budget / 10)
        if self._clock.now() + delay + floor > deadline:
            return False
        await self._clock.sleep(delay)
        return True


def retryable(err: E.RegistryError) -> bool:
    """Errors after which another attempt (maybe on another endpoint) can succeed."""
    return isinstance(err, E.Unavailable | E.DeadlineExceeded)
