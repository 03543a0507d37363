"""The gateway's upstream calls (`Upstream`): the `user` and `chat` instances it follows in the
registry, balancing over them (`GuardedBalancer`: the policy in force, minus instances whose
breaker is open or refused the request, preferring instances the request has not tried), the
request's deadline, GetUser's retries and the per-instance breakers around each attempt, and
the chat stream. A GetUser request's routing state lives in a ContextVar the balancer reads, so
it follows the request's task through `ServiceChannels`. Failures are raised as they are
(`grpc.aio.AioRpcError`, `NoInstance`, `AllCircuitsOpen`, `EmptyStream`, `DeadlineExceeded`);
mapping them to HTTP is the handlers' job. Imports `config` and `breakers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import grpc.aio

from raftreg.client.protocol import RegistryClient
from raftreg.discovery import (
    Balancer,
    Instance,
    NoInstance,
    OutlierDetector,
    Resolver,
    ServiceChannels,
    make_balancer,
)
from raftreg.resilience import (
    MONOTONIC,
    Attempt,
    CircuitOpen,
    Clock,
    Deadline,
    Failure,
    RetryEvent,
    classify,
    deadline_scope,
    retry_call,
)
from services.chat import now_ms
from services.gateway.breakers import InstanceBreakers, counts_against_instance
from services.gateway.config import GatewayConfig, GatewaySettings
from services.pb import chat_pb2, chat_pb2_grpc, user_pb2, user_pb2_grpc
from services.runtime import client_channel

T = TypeVar("T")
# One logger for the whole gateway package: its log lines keep the name they always had.
log = logging.getLogger("services.gateway")


class EmptyStream(Exception):
    """The chat stream ended without an answer."""


class AllCircuitsOpen(NoInstance):
    """There are instances, but every one's breaker refuses calls now; nothing was sent.
    `retry_after` is the time (s) until the first of them lets probes through."""

    def __init__(self, service: str, retry_after: float) -> None:
        super().__init__(f"every instance of {service} has an open circuit")
        self.retry_after = retry_after


@dataclass(slots=True)
class _Route:
    """One GetUser request's routing state: `tried` = instances it called (avoided while there
    are others), `refused` = instances whose breaker refused it (never picked again by it)."""

    tried: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    last: str = ""


# The routing state of the request the current task serves (None outside a GetUser request).
_ROUTE: ContextVar[_Route | None] = ContextVar("services_gateway_route", default=None)
_NO_LOAD: Mapping[str, int] = MappingProxyType({})


class _AnyOf:
    """Membership in any of several containers (an `exclude` for a balancer)."""

    __slots__ = ("_parts",)

    def __init__(self, *parts: Container[str]) -> None:
        self._parts = parts

    def __contains__(self, item: object) -> bool:
        return any(item in p for p in self._parts)


class GuardedBalancer:
    """A balancing policy (`inner`) that never picks an instance whose breaker is open or
    refused the current request, and prefers instances the current request has not tried yet
    (falling back to tried ones only when nothing else is left). Returns None when every
    instance is blocked by a breaker, so the caller sees `NoInstance` without any call."""

    def __init__(self, inner: Balancer, breakers: InstanceBreakers) -> None:
        self.inner = inner
        self.name = inner.name
        self._breakers = breakers

    def update(self, instances: Sequence[Instance]) -> None:
        self.inner.update(instances)

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        route = _ROUTE.get()
        hard = _AnyOf(exclude, self._breakers.open_ids(), route.refused if route else ())
        if route is not None and route.tried:
            inst = self.inner.pick(key, exclude=_AnyOf(hard, route.tried), load=load)
            if inst is not None:
                return inst
        return self.inner.pick(key, exclude=hard, load=load)


def _classify_for_retry(exc: BaseException) -> Failure | None:
    # No instance to call (none at all, or every breaker open) is answered at once: waiting a
    # backoff would not change it within a request's deadline.
    return None if isinstance(exc, NoInstance) else classify(exc)


class Upstream:
    """The gateway's calls to the `user` and `chat` instances (see the module docstring).

    `users` / `chats` (`ServiceChannels`) and their resolvers, `breakers` and `config` (the
    `GatewayConfig` in force) are public attributes; every upstream call goes through
    `call_users` / `call_chats`. `start()` / `stop()` follow and release both services (the
    caller owns `client`); `configure_upstream` puts a new config's upstream part in force."""

    def __init__(
        self,
        client: RegistryClient,
        settings: GatewaySettings,
        config: GatewayConfig,
        *,
        outlier: OutlierDetector | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.settings = settings
        self.config = config
        self.deadline = config.deadline_ms / 1000
        self._retry_policy = config.retry.policy()
        self.breakers = InstanceBreakers(settings.user_service, config.breaker, clock=clock)

        def factory(address: str) -> grpc.aio.Channel:
            return client_channel(address, settings.channel)

        self.user_resolver = Resolver(client, settings.user_service)
        # attempts=1: get_user makes the attempts (retry_call), each one a ServiceChannels call
        self.users = ServiceChannels(
            self.user_resolver,
            policy=GuardedBalancer(make_balancer(config.balancer.policy), self.breakers),
            outlier=outlier, channel_factory=factory, attempts=1,
        )
        config.outlier.apply(self.users.outlier)
        self.chat_resolver = Resolver(client, settings.chat_service)
        self.chats = ServiceChannels(
            self.chat_resolver, policy="round_robin", channel_factory=factory,
            attempts=config.retry.attempts,
        )
        self.retries = 0
        self._untrack: Callable[[], None] | None = None

    async def start(self) -> None:
        """Follow both services; returns after their first list (`Unavailable` after
        `start_timeout`)."""
        self._untrack = self.user_resolver.subscribe(
            lambda instances: self.breakers.track([i.id for i in instances])
        )
        await asyncio.gather(
            self.user_resolver.start(timeout=self.settings.start_timeout),
            self.chat_resolver.start(timeout=self.settings.start_timeout),
        )
        self.breakers.track([i.id for i in self.user_resolver.instances])
        self.users.start()
        self.chats.start()

    async def stop(self) -> None:
        if self._untrack is not None:
            self._untrack()
        await self.users.close()
        await self.chats.close()
        await self.user_resolver.stop()
        await self.chat_resolver.stop()

    def configure_upstream(self, new: GatewayConfig, old: GatewayConfig | None) -> None:
        """Put `new` in force for the upstream calls: the deadline and retry policy from the
        next request on, the breakers and the outlier detector in place, a new balancer when
        the policy changed (or without `old`)."""
        self.config = new
        self.deadline = new.deadline_ms / 1000
        self._retry_policy = new.retry.policy()
        self.breakers.configure(new.breaker)
        new.outlier.apply(self.users.outlier)
        if old is None or new.balancer.policy != old.balancer.policy:
            self.set_policy(new.balancer.policy)

    def set_policy(self, name: str) -> None:
        """A new balancer of policy `name` (fresh state) for the `user` calls."""
        self.users.set_policy(GuardedBalancer(make_balancer(name), self.breakers))

    async def call_users(
        self,
        fn: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        key: bytes | None = None,
        on_pick: Callable[[Instance], None] | None = None,
    ) -> T:
        return await self.users.call(fn, key=key, on_pick=on_pick)

    async def call_chats(self, fn: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        return await self.chats.call(fn, attempts=self.config.retry.attempts)

    async def get_user(
        self, user_id: str, *, key: bytes | None = None
    ) -> user_pb2.GetUserResponse:
        """GetUser within the current deadline (tightened to `deadline_ms`), retried per the
        retry settings. Raises `grpc.aio.AioRpcError`, `NoInstance` (`AllCircuitsOpen` when
        breakers refuse every instance) or `DeadlineExceeded` (no time left to try)."""
        request = user_pb2.GetUserRequest(user_id=user_id)
        route = _Route()
        token = _ROUTE.set(route)
        policy = self._retry_policy

        def on_retry(event: RetryEvent) -> None:
            self.retries += 1
            log.info(
                "%s on %s/%s; retrying in %.0f ms (attempt %d of %d)", event.code.name,
                self.users.service, route.last, event.delay * 1000, event.attempt + 1,
                policy.max_attempts,
            )

        try:
            with deadline_scope(Deadline.from_timeout(self.deadline)):
                return await retry_call(
                    lambda attempt: self._get_user_once(request, attempt, route, key),
                    policy=policy, idempotent=True, classify_error=_classify_for_retry,
                    on_retry=on_retry,
                )
        finally:
            _ROUTE.reset(token)

    async def _get_user_once(
        self,
        request: user_pb2.GetUserRequest,
        attempt: Attempt,
        route: _Route,
        key: bytes | None,
    ) -> user_pb2.GetUserResponse:
        """One attempt: one call on an instance whose breaker admits it. An instance whose
        breaker refuses (half-open with its probes taken) is skipped without spending the
        attempt; the loop ends because each refusal removes one instance from the choice."""
        while True:
            picked: list[Instance] = []
            try:
                return await self._call_one(request, attempt, route, key, picked)
            except CircuitOpen:
                route.refused.add(picked[-1].id)
            except NoInstance:
                if self.user_resolver.instances:
                    raise AllCircuitsOpen(
                        self.users.service, self.breakers.retry_after()
                    ) from None
                raise

    async def _call_one(
        self,
        request: user_pb2.GetUserRequest,
        attempt: Attempt,
        route: _Route,
        key: bytes | None,
        picked: list[Instance],
    ) -> user_pb2.GetUserResponse:
        """GetUser on one balanced instance (appended to `picked`) through its breaker:
        `CircuitOpen` if the breaker refuses. Outcomes that prove the call was not executed
        give the breaker's permit back without counting."""

        def on_pick(inst: Instance) -> None:
            picked.append(inst)
            route.tried.add(inst.id)
            route.last = inst.id

        async def call(channel: grpc.aio.Channel) -> user_pb2.GetUserResponse:
            breaker = self.breakers.get(picked[-1].id)
            stub = user_pb2_grpc.UserServiceStub(channel)
            if breaker is None:
                return await stub.GetUser(request, timeout=attempt.timeout)
            permit = breaker.acquire()
            if permit is None:
                raise breaker.reject()
            try:
                response = await stub.GetUser(request, timeout=attempt.timeout)
            except Exception as e:
                failure = classify(e)
                if failure is not None and failure.not_executed:
                    permit.release()
                else:
                    permit.record(not counts_against_instance(e))
                raise
            except BaseException:
                permit.release()
                raise
            permit.record(True)
            return response

        return await self.call_users(call, key=key, on_pick=on_pick)

    async def chat(self, content: str) -> chat_pb2.Message:
        """One message through a chat instance's SyncStream, within the current deadline
        (tightened to `deadline_ms`); its one answer. Raises `grpc.aio.AioRpcError`,
        `NoInstance` or `EmptyStream`."""

        async def call(channel: grpc.aio.Channel) -> chat_pb2.Message:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            stream = stub.SyncStream(None)  # the deadline interceptor bounds it
            try:
                # a call that already ended (instance gone): read() below raises its status
                with contextlib.suppress(asyncio.InvalidStateError):
                    await stream.write(chat_pb2.Message(content=content, timestamp=now_ms()))
                    await stream.done_writing()
                reply = await stream.read()
                if not isinstance(reply, chat_pb2.Message):
                    raise EmptyStream("the chat stream ended without an answer")
                await stream.code()  # the server ends the stream after our half-close
                return reply
            finally:
                stream.cancel()

        with deadline_scope(Deadline.from_timeout(self.deadline)):
            return await self.call_chats(call)
