"""`ServiceChannels`: calls "to service X" over gRPC, one channel per live instance.

grpcio for Python has no pluggable resolver or balancer, so this is ours:
- One `grpc.aio.Channel` per live instance, opened when the resolver reports the instance and
  closed (after `close_grace` seconds, so in-flight calls finish) when it goes away or its
  address changes.
- `call(fn)` picks an instance per call with the current balancing policy (skipping instances
  the outlier detector has ejected), runs `fn(channel)`, counts outstanding requests for the
  load-aware policies, and reports the outcome to the outlier detector.
- A call that fails with a status in `retry_on` (by default UNAVAILABLE: the instance could not
  be reached) is tried again on another instance, up to `attempts` instances. The caller
  decides whether its call is safe to repeat; pass `attempts=1` for one that is not.
- When every instance is ejected the detector's choice is ignored (better a doubtful instance
  than none); with no instance at all, `call` raises `NoInstance` (an `Unavailable`).
- The policy can be changed live with `set_policy`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import grpc
import grpc.aio

from raftreg.discovery.balancer import Balancer, make_balancer
from raftreg.discovery.instance import Instance
from raftreg.discovery.outlier import OutlierDetector
from raftreg.discovery.resolver import Resolver
from raftreg.errors import Unavailable

log = logging.getLogger("raftreg.discovery")

T = TypeVar("T")
ChannelFactory = Callable[[str], grpc.aio.Channel]

# Statuses that say something about the instance's health (as opposed to the request's).
FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
})


class NoInstance(Unavailable):
    """No live instance of the service to call."""


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


@dataclass(frozen=True, slots=True)
class Picked:
    instance: Instance
    channel: grpc.aio.Channel


class ServiceChannels:
    """Per-call balanced gRPC calls to the instances `resolver` knows; see the module docstring."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        policy: str | Balancer = "round_robin",
        outlier: OutlierDetector | None = None,
        channel_factory: ChannelFactory = insecure_channel,
        retry_on: Collection[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
        attempts: int = 3,
        close_grace: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._balancer = policy if not isinstance(policy, str) else make_balancer(policy, self._rng)
        self.outlier = outlier or OutlierDetector()
        self._factory = channel_factory
        self._retry_on = frozenset(retry_on)
        self._attempts = attempts
        self._close_grace = close_grace
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self._by_id: dict[str, Instance] = {}
        self._outstanding: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        self._closing: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    @property
    def service(self) -> str:
        return self._resolver.service

    @property
    def policy(self) -> str:
        return self._balancer.name

    @property
    def outstanding(self) -> Mapping[str, int]:
        return self._outstanding

    def set_policy(self, policy: str | Balancer) -> None:
        """Switch the balancing policy; takes effect on the next call."""
        if isinstance(policy, str):
            if policy == self._balancer.name:
                return
            policy = make_balancer(policy, self._rng)
        policy.update(tuple(self._by_id.values()))
        self._balancer = policy

    def start(self) -> None:
        """Follow the resolver (which the caller starts and stops)."""
        if self._unsubscribe is None:
            self._unsubscribe = self._resolver.subscribe(self._on_instances)
            self._on_instances(self._resolver.instances)

    async def close(self) -> None:
        """Close every channel. Idempotent."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        chans, self._channels = self._channels, {}
        for _, ch in chans.values():
            await ch.close(None)
        for t in list(self._closing):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def pick(self, key: bytes | None = None, *, exclude: Collection[str] = ()) -> Picked:
        """An instance and its channel for one call; `NoInstance` if there is none."""
        avoid = set(exclude) | self.outlier.ejected()
        inst = self._balancer.pick(key, exclude=avoid, load=self._outstanding)
        if inst is None and exclude != avoid:
            inst = self._balancer.pick(key, exclude=set(exclude), load=self._outstanding)
        if inst is None:
            raise NoInstance(f"no live instance of {self.service}")
        ch = self._channels[inst.id][1]
        return Picked(inst, ch)

    async def call(
        self,
        fn: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        key: bytes | None = None,
        attempts: int | None = None,
        on_pick: Callable[[Instance], None] | None = None,
    ) -> T:
        """`fn(channel)` on an instance chosen per call; retried on another instance for
        statuses in `retry_on`, up to `attempts` instances. Raises the last `grpc.aio.AioRpcError`,
        or `NoInstance`."""
        tried: set[str] = set()
        last: grpc.aio.AioRpcError | None = None
        limit = self._attempts if attempts is None else attempts
        while True:
            try:
                picked = self.pick(key, exclude=tried)
            except NoInstance:
                if last is None:
                    raise
                raise last from None
            inst = picked.instance
            tried.add(inst.id)
            if on_pick is not None:
                on_pick(inst)
            self._outstanding[inst.id] += 1
            try:
                result = await fn(picked.channel)
            except grpc.aio.AioRpcError as e:
                self.outlier.record(inst.id, e.code() not in FAILURE_CODES)
                if e.code() not in self._retry_on or len(tried) >= limit:
                    raise
                last = e
                log.info("%s on %s/%s; trying another instance", e.code().name,
                         self.service, inst.id)
                continue
            finally:
                self._outstanding[inst.id] -= 1
                if self._outstanding[inst.id] <= 0:
                    del self._outstanding[inst.id]
            self.outlier.record(inst.id, True)
            self.served[inst.id] += 1
            return result

    # ------------------------------------------------------------------ internals

    def _on_instances(self, instances: tuple[Instance, ...]) -> None:
        if self._closed:
            return
        by_id = {i.id: i for i in instances}
        for iid, (addr, ch) in list(self._channels.items()):
            inst = by_id.get(iid)
            if inst is None or inst.address != addr:
                del self._channels[iid]
                self._close_later(ch)
        for iid, inst in by_id.items():
            if iid not in self._channels:
                self._channels[iid] = (inst.address, self._factory(inst.address))
        self._by_id = by_id
        self.outlier.track(by_id)
        self._balancer.update(instances)

    def _close_later(self, ch: grpc.aio.Channel) -> None:
        async def close() -> None:
            # in-flight calls get the grace period; cancelled (by `close()`), the channel
            # closes at once — never left half-closed
            try:
                await asyncio.sleep(self._close_grace)
            finally:
                await ch.close(None)

        t = asyncio.get_running_loop().create_task(close())
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)
