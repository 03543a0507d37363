"""Issue 5 with real processes: the gateway's per-instance circuit breakers and fallback,
bearer-token auth between the gateway and a user instance, deadline propagation from an HTTP
request to the user instance's gRPC call; and, on an in-process gRPC server, that retries never
repeat a non-idempotent call and that backoff waits grow as configured.

Every test configures its gateway through the config center (`/config/<gateway service>/`)
before or while it runs. Tests with processes are marked slow; their gateways run with
`GENEROUS_DEADLINE` unless deadlines are the subject, and the deadline test uses deadlines of
seconds, so that a busy machine delays answers but never changes them. Bounds on counts follow
from the configuration over measured intervals; the in-process retry test drives the server's
rate limit with a `ManualClock`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftreg.client import RegistryClient
from raftreg.configcenter import DELETE, ConfigCenter
from raftreg.resilience import (
    Backoff,
    ClientRetryInterceptor,
    ManualClock,
    RateLimit,
    RateLimiter,
    RetryEvent,
    RetryPolicy,
    ServerRateLimitInterceptor,
    client_chain,
)
from services.pb import user_pb2, user_pb2_grpc
from services.runtime import ServiceSettings, server_interceptors
from services.testing import (
    ServiceGroup,
    ServiceProc,
    Traffic,
    get_json,
    instance_ids,
    post_json,
    send_user_traffic,
    wait_stats,
)
from tests.services.conftest import GENEROUS_DEADLINE

# ---------------------------------------------------------------------- helpers


async def _configure(client: RegistryClient, service: str, settings: dict[str, Any]) -> int:
    """Publish `settings` for `service` in one revision; returns it."""
    return await ConfigCenter(client).publish(service, settings)


async def _applied(http: aiohttp.ClientSession, gw: str, revision: int) -> dict[str, Any]:
    """The gateway's stats once it has the config of `revision` (or later) in force."""
    return await wait_stats(http, gw, lambda s: s["config"]["revision"] >= revision, timeout=10)


async def _calls(http: aiohttp.ClientSession, user: ServiceProc) -> int:
    """GetUser calls the user instance received since its failure setting last changed."""
    status, doc = await get_json(http, f"{user.http_url}/admin/fail")
    assert status == 200, doc
    return int(doc["calls"])


async def _fail(http: aiohttp.ClientSession, user: ServiceProc, rate: float,
                code: str | None = "UNAVAILABLE") -> None:
    status, doc = await post_json(http, f"{user.http_url}/admin/fail",
                                  {"rate": rate, "code": code})
    assert status == 200, doc


def _add(total: Traffic, t: Traffic) -> None:
    total.served.update(t.served)
    total.failed.update(t.failed)
    total.seconds += t.seconds


async def _traffic_until(
    http: aiohttp.ClientSession,
    gw: str,
    total: Traffic,
    done: Any,
    *,
    timeout: float = 30.0,
    batch: int = 12,
) -> dict[str, Any]:
    """Send batches of GET /user (added to `total`) until `done(stats)`; the stats then.
    `TimeoutError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        _add(total, await send_user_traffic(http, gw, batch, concurrency=3))
        stats = (await get_json(http, f"{gw}/stats"))[1]
        if done(stats):
            return dict(stats)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout}s: {stats['breakers']} {total}")


def _gateway_args(service: str, user_service: str, *extra: str) -> list[str]:
    """A gateway of `service` in front of `user_service`, with `GENEROUS_DEADLINE` unless
    `extra` sets --deadline-ms."""
    deadline = () if "--deadline-ms" in extra else GENEROUS_DEADLINE
    return ["--service", service, "--user-service", user_service,
            "--chat-service", f"{user_service}-chat", *deadline, *extra]


# ---------------------------------------------------------------------- breakers


@pytest.mark.slow
async def test_failing_instance_trips_its_breaker_and_comes_back_after_probes(
    group: ServiceGroup, http: aiohttp.ClientSession, registry: RegistryClient
) -> None:
    svc, gsvc = "user-brk", "gateway-brk"
    open_for, probes = 1.0, 2
    # Outlier ejection off: the breaker alone must keep the failing instance out. A window of
    # 10 s: the 6 failed calls that trip it need not come within a second.
    await _configure(registry, gsvc, {
        "breaker.window_s": 10, "breaker.min_calls": 6, "breaker.open_for_s": open_for,
        "breaker.half_open_probes": probes, "outlier.max_ejected_fraction": 0,
        "retry.base_ms": 1,
    })
    users = {"b1", "b2", "b3"}
    await asyncio.to_thread(group.start_many, [
        ("user", u, ["--service", svc]) for u in sorted(users)
    ] + [("gateway", "g-brk", _gateway_args(gsvc, svc, "--policy", "round_robin"))])
    gw, b2 = group.ready["g-brk"].http_url, group.ready["b2"]
    stats = await wait_stats(http, gw, lambda s: instance_ids(s) == users)
    assert stats["config"]["settings"]["breaker"]["open_for_s"] == open_for
    assert {u: stats["breakers"][u]["state"] for u in users} == dict.fromkeys(users, "closed")
    total = Traffic()
    _add(total, await send_user_traffic(http, gw, 30, concurrency=3))
    assert set(total.served) == users, total

    # b2 fails every call: its breaker opens; the gateway retries its requests elsewhere
    await _fail(http, b2, 1.0, "UNAVAILABLE")
    stats = await _traffic_until(http, gw, total, lambda s: s["breakers"]["b2"]["opened"] >= 1)
    assert stats["breakers"]["b1"]["state"] == stats["breakers"]["b3"]["state"] == "closed"

    # While it keeps failing, b2 gets only half-open probes: at most `probes` per open period
    # of the time that passed. The traffic runs for at least 2.5 open periods, and until the
    # others have served at least 6x what b2 may get: round robin alone would have sent b2
    # half as much as b1 and b3 together, i.e. at least 3x its bound.
    calls_at_open, t0 = await _calls(http, b2), time.monotonic()
    failing = Traffic()
    deadline = t0 + 60
    while True:
        _add(failing, await send_user_traffic(http, gw, 12, concurrency=3))
        probed = await _calls(http, b2) - calls_at_open
        elapsed = time.monotonic() - t0  # after reading `probed`: every counted call is in it
        bound = probes * (math.ceil(elapsed / open_for) + 1)
        assert probed <= bound, (probed, bound, elapsed, failing)
        if elapsed >= 2.5 * open_for and failing.ok >= 6 * bound:
            break
        assert time.monotonic() < deadline, (probed, bound, elapsed, failing)
    assert probed >= 1, (probed, elapsed)  # the breaker does let probes through
    assert failing.failures == 0 and set(failing.served) == {"b1", "b3"}, failing
    stats = (await get_json(http, f"{gw}/stats"))[1]
    assert stats["breakers"]["b2"]["opened"] >= 2, stats["breakers"]  # failed probes reopen it
    _add(total, failing)

    # b2 recovers: the next half-open probes succeed, the breaker closes, traffic comes back
    await _fail(http, b2, 0.0, None)
    await _traffic_until(http, gw, total, lambda s: s["breakers"]["b2"]["state"] == "closed",
                         timeout=30)
    after = await send_user_traffic(http, gw, 60, concurrency=3)
    assert after.failures == 0 and after.served["b2"] >= 15, after
    _add(total, after)

    assert total.failures == 0, total  # not one client-visible failure throughout
    log = group.log_text("g-brk")
    for transition in ("closed -> open", "open -> half_open", "half_open -> open",
                       "half_open -> closed"):
        assert f"breaker {svc}/b2: {transition}" in log, transition
    assert "UNAVAILABLE on user-brk/b2; retrying" in log
    # both ends log every failed call through their logging interceptors
    assert (f"rpc client method=/example.UserService/GetUser peer={b2.grpc} code=UNAVAILABLE"
            in log)
    assert "rpc server method=/example.UserService/GetUser peer=" in group.log_text("b2")


@pytest.mark.slow
async def test_every_breaker_open_answers_the_fallback_without_calling(
    group: ServiceGroup, http: aiohttp.ClientSession, registry: RegistryClient
) -> None:
    svc, gsvc = "user-fb", "gateway-fb"
    # open for 300 s: the breaker stays open (and says so) however slowly the test runs
    open_for = 300
    await _configure(registry, gsvc, {
        "breaker.window_s": 60, "breaker.min_calls": 3, "breaker.open_for_s": open_for,
        "retry.base_ms": 1,
    })
    await asyncio.to_thread(group.start_many, [
        ("user", "f1", ["--service", svc]), ("gateway", "g-fb", _gateway_args(gsvc, svc)),
    ])
    gw, f1 = group.ready["g-fb"].http_url, group.ready["f1"]
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"f1"})
    await _fail(http, f1, 1.0, "UNAVAILABLE")
    answers: list[tuple[int, Any]] = []
    for _ in range(10):
        answers.append(await get_json(http, f"{gw}/user?id=1"))
        if answers[-1][1].get("fallback"):
            break
    # the failed calls were answered as such, until the breaker opened
    assert all(s == 503 and d["code"] == "UNAVAILABLE" for s, d in answers), answers
    assert not any(d.get("fallback") for _, d in answers[:-1]) and answers[-1][1]["fallback"]
    calls = await _calls(http, f1)
    assert 3 <= calls <= 6, calls  # min_calls failures (a request makes up to 3 attempts)

    for _ in range(10):
        async with http.get(f"{gw}/user?id=2") as r:
            doc = await r.json()
            assert r.status == 503 and doc["fallback"] is True, doc
            assert doc["code"] == "UNAVAILABLE", doc
            assert open_for * 1000 / 2 < doc["retry_after_ms"] <= open_for * 1000, doc
            assert open_for / 2 < int(r.headers["Retry-After"]) <= open_for, r.headers
    assert await _calls(http, f1) == calls  # answered without calling the instance
    stats = (await get_json(http, f"{gw}/stats"))[1]
    assert stats["fallbacks"] == 11 and stats["breakers"]["f1"]["state"] == "open", stats


# ---------------------------------------------------------------------- auth and deadlines

TOKEN = "s3cret-token"
SECURED_DEADLINE_MS = 20_000  # g-tok's --deadline-ms


@dataclass(frozen=True)
class Secured:
    """A user instance that requires TOKEN, a gateway that sends it, one that sends none."""

    group: ServiceGroup
    user: ServiceProc
    with_token: ServiceProc
    without_token: ServiceProc
    config_service: str = "gateway-auth"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, registry_url: str) -> Iterator[Secured]:
    svc = "user-auth"
    with ServiceGroup(tmp_path_factory.mktemp("secured"), registry_url) as g:
        g.start_many([
            ("user", "s1", ["--service", svc, "--token", TOKEN]),
            ("gateway", "g-tok", _gateway_args(
                "gateway-auth", svc, "--upstream-token", TOKEN,
                "--deadline-ms", str(SECURED_DEADLINE_MS),
            )),
            ("gateway", "g-notok", _gateway_args("gateway-notok", svc)),
        ])
        yield Secured(g, g.ready["s1"], g.ready["g-tok"], g.ready["g-notok"])


async def _seen(http: aiohttp.ClientSession, user: ServiceProc) -> dict[str, Any]:
    status, doc = await get_json(http, f"{user.http_url}/admin/calls")
    assert status == 200, doc
    return dict(doc)


@pytest.mark.slow
async def test_user_instance_with_a_token_refuses_calls_without_it(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    before = (await _seen(http, secured.user))["calls"]
    request = user_pb2.GetUserRequest(user_id="1")
    async with grpc.aio.insecure_channel(secured.user.grpc) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        for metadata in ((), (("authorization", "Bearer wrong"),),
                         (("authorization", TOKEN),)):  # no "Bearer" scheme
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetUser(request, timeout=5, metadata=metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert (await _seen(http, secured.user))["calls"] == before  # never reached GetUser
        r = await stub.GetUser(request, timeout=5,
                               metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert (r.name, r.served_by) == ("Alice", "s1")
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="example.UserService"), timeout=5
        )  # exempt from auth: registration and health checks need no token
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    plain, tok = secured.without_token.http_url, secured.with_token.http_url
    for gw in (plain, tok):
        await wait_stats(http, gw, lambda s: instance_ids(s) == {"s1"})
    for _ in range(5):
        status, doc = await get_json(http, f"{plain}/user?id=2")
        assert (status, doc["code"]) == (502, "UNAUTHENTICATED"), doc
    stats = (await get_json(http, f"{plain}/stats"))[1]
    # refusals marked not executed say nothing about the instance's health
    s1 = stats["breakers"]["s1"]
    assert s1["failures"] == 0 and s1["successes"] == 0 and stats["retries"] == 0, stats
    t = await send_user_traffic(http, tok, 10)
    assert t.failures == 0 and t.served == {"s1": 10}, t


@pytest.mark.slow
async def test_deadline_propagates_from_the_http_request_to_the_user_instance(
    secured: Secured, http: aiohttp.ClientSession, registry: RegistryClient
) -> None:
    """The user instance sees the deadline the gateway applied: at most the one set, and more
    than half of it (the hop takes far less than half of these seconds-long deadlines, so a
    deadline that is not propagated, or not tightened, shows)."""
    gw = secured.with_token.http_url
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"s1"})

    async def seen_ms(headers: dict[str, str] | None = None) -> float:
        status, doc = await get_json(http, f"{gw}/user?id=3", headers=headers)
        assert status == 200, doc
        last = (await _seen(http, secured.user))["deadline_ms"]["last"]
        assert last is not None
        return float(last)

    def within(ms: float, limit_ms: float) -> bool:
        return limit_ms / 2 < ms <= limit_ms

    # the gateway's deadline_ms (--deadline-ms 20000 here) reaches the user instance ...
    default = await seen_ms()
    assert within(default, SECURED_DEADLINE_MS), default
    # ... a request's timeout header tightens it (never loosens it) ...
    seen = await seen_ms({"X-Request-Timeout": "3"})
    assert within(seen, 3000), seen
    seen = await seen_ms({"grpc-timeout": "2500m"})
    assert within(seen, 2500), seen
    seen = await seen_ms({"X-Request-Timeout": "3", "grpc-timeout": "4S"})  # the earliest
    assert within(seen, 3000), seen
    seen = await seen_ms({"X-Request-Timeout": "60"})
    assert within(seen, SECURED_DEADLINE_MS), seen
    status, doc = await get_json(http, f"{gw}/user?id=3", headers={"grpc-timeout": "soon"})
    assert (status, doc["code"]) == (400, "INVALID_ARGUMENT"), doc
    status, doc = await get_json(http, f"{gw}/user?id=3", headers={"X-Request-Timeout": "0"})
    assert (status, doc["code"]) == (504, "DEADLINE_EXCEEDED"), doc

    # ... and deadline_ms itself is a live setting, over the command line's
    rev = await _configure(registry, secured.config_service, {"deadline_ms": 4000})
    try:
        stats = await _applied(http, gw, rev)
        assert stats["deadline_ms"] == 4000
        seen = await seen_ms()
        assert within(seen, 4000), seen
    finally:
        rev = await _configure(registry, secured.config_service, {"deadline_ms": DELETE})
    stats = await _applied(http, gw, rev)
    assert stats["deadline_ms"] == SECURED_DEADLINE_MS  # the command line's again
    calls = await _seen(http, secured.user)
    assert calls["without_deadline"] == 0, calls


# ---------------------------------------------------------------------- retries (in-process)

_SERVICE = "test.Counter"
ADD, GET = f"/{_SERVICE}/Add", f"/{_SERVICE}/Get"


@dataclass
class Counter:
    """A tiny gRPC service: `Add` (not idempotent) and `Get` (idempotent). Each records when
    it ran (its effect), then waits `delay` and answers OK, or the first of `fail[method]`
    (status codes to answer, after running, on its next runs)."""

    runs: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    fail: dict[str, list[grpc.StatusCode]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    delay: float = 0.0

    def handler(self, name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def behave(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
                         ) -> bytes:
            self.runs[name].append(time.monotonic())  # the call's effect
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail[name]:
                await context.abort(self.fail[name].pop(0), f"{name} failed after running")
            return b"ok"

        return grpc.unary_unary_rpc_method_handler(behave)


async def _serve(counter: Counter, interceptors: list[Any]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        _SERVICE, {"Add": counter.handler("Add"), "Get": counter.handler("Get")}
    ),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def counter_server() -> AsyncIterator[tuple[Counter, str, ManualClock]]:
    counter = Counter()
    # 10 calls/s per method, one at a time: a second call within 100 ms is refused unexecuted.
    # Time, for the limiter, is the returned ManualClock: it passes only when the test says so.
    clock = ManualClock()
    limiter = RateLimiter(RateLimit(10.0, 1.0), clock=clock)
    server, target = await _serve(counter, [ServerRateLimitInterceptor(limiter)])
    try:
        yield counter, target, clock
    finally:
        await server.stop(None)


def _retrying_channel(
    target: str, policy: RetryPolicy, events: list[RetryEvent], clock: ManualClock
) -> grpc.aio.Channel:
    """A channel that retries per `policy`, recording each retry in `events`; the limiter's
    `clock` moves on by each backoff wait as it starts (the wait itself is real)."""

    def on_retry(method: str, ev: RetryEvent) -> None:
        events.append(ev)
        clock.advance(ev.delay)

    retry = ClientRetryInterceptor(policy, idempotent=[GET], on_retry=on_retry)
    return grpc.aio.insecure_channel(target, interceptors=client_chain(retry))


async def test_retries_never_repeat_a_non_idempotent_call_and_back_off_as_configured(
    counter_server: tuple[Counter, str, ManualClock]
) -> None:
    counter, target, clock = counter_server
    code = grpc.StatusCode
    # attempt_timeout_s=2: no answer is slow enough to time out except the one meant to
    policy = RetryPolicy(
        max_attempts=4, budget_s=30.0, attempt_timeout_s=2.0,
        backoff=Backoff(base=0.12, multiplier=2.0, max_delay=1.0, jitter="none"),
        retry_on={code.UNAVAILABLE, code.DEADLINE_EXCEEDED, code.RESOURCE_EXHAUSTED},
    )
    events: list[RetryEvent] = []
    async with _retrying_channel(target, policy, events, clock) as ch:
        add, get = ch.unary_unary(ADD, None, None), ch.unary_unary(GET, None, None)

        # Add ran, then failed UNAVAILABLE (as when the connection breaks after the effect):
        # nothing proves it did not run, so it is not repeated
        counter.fail["Add"] = [code.UNAVAILABLE]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await add(b"x")
        assert e.value.code() == code.UNAVAILABLE
        assert len(counter.runs["Add"]) == 1 and events == []

        # Get is idempotent: retried until it succeeds, waiting 120, 240, 480 ms in between
        # (each wait gives the limiter's clock that much time: a token per retry)
        counter.fail["Get"] = [code.UNAVAILABLE] * 3
        assert await get(b"x") == b"ok"
        assert [ev.delay for ev in events] == pytest.approx([0.12, 0.24, 0.48])
        assert [ev.attempt for ev in events] == [1, 2, 3]
        runs = counter.runs["Get"]
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        assert len(runs) == 4 and all(g >= d - 0.01 for g, d in
                                      zip(gaps, (0.12, 0.24, 0.48), strict=True)), gaps

        # A refusal that proves non-execution (the server's rate limit) may be retried even
        # for Add: two Adds at one instant of the limiter's clock run exactly twice, the second
        # after one retry
        clock.advance(0.15)  # a fresh rate-limit token for Add
        events.clear()
        before = len(counter.runs["Add"])
        await asyncio.gather(add(b"1"), add(b"2"))
        assert len(counter.runs["Add"]) - before == 2
        assert [ev.code for ev in events] == [code.RESOURCE_EXHAUSTED]

        # An attempt that timed out may have run (this one did): Add is not retried
        clock.advance(0.15)
        events.clear()
        counter.delay = 60.0  # far longer than attempt_timeout_s (the server's stop ends it)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await add(b"x")
        assert e.value.code() == code.DEADLINE_EXCEEDED and events == []
        assert len(counter.runs["Add"]) - before == 3


async def test_the_services_server_chain_authenticates_then_rate_limits() -> None:
    """The chain every service process runs (`--token tok --rate-limit 0.1 --rate-burst 2`)."""
    counter = Counter()
    settings = ServiceSettings(service="t", id="t1", tokens=("tok",), rate_limit=0.1,
                               rate_burst=2)
    server, target = await _serve(counter, server_interceptors(settings))
    try:
        async with grpc.aio.insecure_channel(target) as ch:
            add = ch.unary_unary(ADD, None, None)
            codes = []
            for md in ((), (("authorization", "Bearer tok"),)):
                for _ in range(3):
                    try:
                        await add(b"x", timeout=5, metadata=md)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as e:
                        codes.append(e.code())
                        assert dict(e.trailing_metadata() or ())["raftreg-not-executed"] == "1"
        # refused without the token (using none of the budget), then a burst of 2, then
        # refused by the limit
        c = grpc.StatusCode
        assert codes == [c.UNAUTHENTICATED] * 3 + [c.OK, c.OK, c.RESOURCE_EXHAUSTED]
        assert len(counter.runs["Add"]) == 2
    finally:
        await server.stop(None)
