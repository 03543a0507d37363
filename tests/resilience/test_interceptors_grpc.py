"""The interceptors on real grpc.aio servers and channels (127.0.0.1, port 0, bytes in/out):
auth, server rate limit, deadline propagation over two hops, retry, breaker, logging, and
that every call kind still works (with its serializers) through the wrappers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

from raftreg.resilience import (
    NOT_EXECUTED_KEY,
    Backoff,
    BreakerGroup,
    BreakerSettings,
    BreakerState,
    ClientAuthInterceptor,
    ClientBreakerInterceptor,
    ClientDeadlineInterceptor,
    ClientLoggingInterceptor,
    ClientRateLimitInterceptor,
    ClientRetryInterceptor,
    Deadline,
    ManualClock,
    RateLimit,
    RateLimiter,
    RetryEvent,
    RetryPolicy,
    ServerAuthInterceptor,
    ServerDeadlineInterceptor,
    ServerLoggingInterceptor,
    ServerRateLimitInterceptor,
    TokenBucket,
    client_chain,
    current_deadline,
    deadline_from_header,
    deadline_scope,
)
from raftreg.resilience.rpc import metadata_value

from .helpers import serve, wait_until

pytestmark = pytest.mark.timeout(60)

WIRE = 0.02  # gRPC rounds a timeout up when it encodes it (a few significant digits)


def unary(fn: Any, **kw: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(fn, **kw)


def not_executed(e: grpc.aio.AioRpcError) -> bool:
    return metadata_value(e.trailing_metadata(), NOT_EXECUTED_KEY) == "1"


async def test_auth_refuses_missing_and_wrong_tokens_and_admits_the_right_one() -> None:
    served: list[bytes] = []

    async def echo(request: bytes, context: Any) -> bytes:
        served.append(request)
        return request

    async def numbers(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i])

    async def check(request: bytes, context: Any) -> bytes:
        return b"SERVING"

    services = {
        "t.Echo": {"Say": unary(echo), "Count": grpc.unary_stream_rpc_method_handler(numbers)},
        "grpc.health.v1.Health": {"Check": unary(check)},
    }
    auth = ServerAuthInterceptor(["s3cret", "other"])
    async with serve(services, [auth]) as target:
        async with grpc.aio.insecure_channel(target) as plain:
            say = plain.unary_unary("/t.Echo/Say")
            for md in [
                (),
                (("authorization", "Bearer nope"),),
                (("authorization", "s3cret"),),
                (("authorization", "Basic s3cret"),),
                (("authorization", "Bearer "),),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await say(b"a", metadata=md, timeout=5)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert not_executed(info.value)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [r async for r in plain.unary_stream("/t.Echo/Count")(b"", timeout=5)]
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert served == []
            # exempt: the health service needs no token
            assert await plain.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5) == (
                b"SERVING"
            )
            assert await say(b"m", metadata=(("authorization", "Bearer s3cret"),)) == b"m"

        chain = client_chain(ClientAuthInterceptor("s3cret"))
        async with grpc.aio.insecure_channel(target, interceptors=chain) as ch:
            assert await ch.unary_unary("/t.Echo/Say")(b"b", timeout=5) == b"b"
            stream = ch.unary_stream("/t.Echo/Count")(b"", timeout=5)
            assert [r async for r in stream] == [b"\0", b"\1", b"\2"]
            auth.configure(tokens=["rotated"])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/t.Echo/Say")(b"c", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert served == [b"m", b"b"]


async def test_server_rate_limit_refuses_the_share_above_the_rate() -> None:
    served = 0

    async def work(request: bytes, context: Any) -> bytes:
        nonlocal served
        served += 1
        return b"done"

    clock = ManualClock()
    limiter = RateLimiter(RateLimit(rate_per_s=1.0, burst=5), clock=clock)
    services = {"t.Svc": {"Work": unary(work)}}
    async with (
        serve(services, [ServerRateLimitInterceptor(limiter)]) as target,
        grpc.aio.insecure_channel(target) as ch,
    ):
        work_call = ch.unary_unary("/t.Svc/Work")

        async def burst(n: int) -> tuple[int, int]:
            results = await asyncio.gather(
                *(work_call(b"", timeout=5) for _ in range(n)), return_exceptions=True
            )
            refused = [
                r
                for r in results
                if isinstance(r, grpc.aio.AioRpcError)
                and r.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                and not_executed(r)
            ]
            return results.count(b"done"), len(refused)

        assert await burst(20) == (5, 15)
        assert served == 5
        clock.advance(2.0)  # two tokens at 1/s
        assert await burst(10) == (2, 8)
        limiter.configure(None)  # live: unlimited
        assert await burst(10) == (10, 0)
        assert served == 17


async def test_deadline_propagates_across_two_hops() -> None:
    seen: dict[str, Any] = {}
    b_calls = 0

    async def b_work(request: bytes, context: Any) -> bytes:
        nonlocal b_calls
        b_calls += 1
        seen["b"] = context.time_remaining()
        return b"b"

    margin = 0.1
    async with serve({"t.B": {"Work": unary(b_work)}}, [ServerDeadlineInterceptor()]) as b_target:
        to_b = grpc.aio.insecure_channel(
            b_target, interceptors=client_chain(ClientDeadlineInterceptor(margin_s=margin))
        )
        plain_to_b = grpc.aio.insecure_channel(b_target)

        async def a_work(request: bytes, context: Any) -> bytes:
            seen["a"] = context.time_remaining()
            seen["a_current"] = current_deadline()
            channel = plain_to_b if request == b"plain" else to_b
            await channel.unary_unary("/t.B/Work")(b"")
            return b"a"

        a_interceptors = [ServerDeadlineInterceptor(default_timeout_s=2.0)]
        try:
            async with (
                serve({"t.A": {"Work": unary(a_work)}}, a_interceptors) as a_target,
                grpc.aio.insecure_channel(a_target) as to_a,
            ):
                a = to_a.unary_unary("/t.A/Work")
                assert await a(b"", timeout=5.0) == b"a"
                assert seen["b"] is not None
                assert 0 < seen["b"] < seen["a"] - margin + WIRE and seen["a"] <= 5.0 + WIRE
                assert seen["a_current"] is not None

                # without the client interceptor nothing propagates
                assert await a(b"plain", timeout=5.0) == b"a"
                assert seen["b"] is None

                # a call to A without a deadline gets A's default (2 s), which B then sees
                await a(b"")
                assert 0 < seen["b"] <= 2.0 - margin + WIRE

                # the gateway hop: an HTTP request's timeout header becomes the deadline (3 s:
                # enough for the hop on any machine; B has no default, so any deadline B sees
                # came from the header)
                with deadline_scope(deadline_from_header("3S")):
                    assert await to_b.unary_unary("/t.B/Work")(b"") == b"b"
                assert seen["b"] is not None and 0 < seen["b"] <= 3.0 - margin + WIRE

                # a deadline that already passed: refused locally, B is not called
                calls_before = b_calls
                with (
                    deadline_scope(Deadline.from_timeout(0.0)),
                    pytest.raises(grpc.aio.AioRpcError) as info,
                ):
                    await to_b.unary_unary("/t.B/Work")(b"")
                assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                assert not_executed(info.value) and b_calls == calls_before
        finally:
            await to_b.close()
            await plain_to_b.close()


async def test_retry_retries_idempotent_methods_only() -> None:
    served: Counter[str] = Counter()

    async def get(request: bytes, context: Any) -> bytes:
        served["Get"] += 1
        if served["Get"] <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b"got"

    async def create(request: bytes, context: Any) -> bytes:
        served["Create"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "lost after sending")
        raise AssertionError("unreachable")

    async def put(request: bytes, context: Any) -> bytes:
        served["Put"] += 1
        return b"put"

    limiter = RateLimiter(None, {"t.Store/Put": RateLimit(1.0, 1)}, clock=ManualClock())
    services = {"t.Store": {"Get": unary(get), "Create": unary(create), "Put": unary(put)}}
    events: list[tuple[str, RetryEvent]] = []
    policy = RetryPolicy(
        max_attempts=4,
        budget_s=10.0,
        backoff=Backoff(base=0.01, multiplier=2.0, max_delay=0.05, jitter="none"),
        retry_on=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}),
    )
    retry = ClientRetryInterceptor(
        policy, idempotent=["t.Store/Get"], on_retry=lambda m, e: events.append((m, e))
    )
    async with (
        serve(services, [ServerRateLimitInterceptor(limiter)]) as target,
        grpc.aio.insecure_channel(target, interceptors=client_chain(retry)) as ch,
    ):
        assert await ch.unary_unary("/t.Store/Get")(b"", timeout=5) == b"got"
        assert served["Get"] == 3
        assert [(m, e.delay) for m, e in events] == [("/t.Store/Get", 0.01), ("/t.Store/Get", 0.02)]

        events.clear()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/t.Store/Create")(b"", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "lost after sending"
        assert served["Create"] == 1 and events == []

        # Put is not idempotent, but a rate-limit refusal proves it was not executed
        assert await ch.unary_unary("/t.Store/Put")(b"", timeout=5) == b"put"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/t.Store/Put")(b"", timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert served["Put"] == 1 and len(events) == 3


async def test_breaker_opens_stops_calling_then_probes_close_it() -> None:
    served: Counter[str] = Counter()
    broken = True

    async def work(request: bytes, context: Any) -> bytes:
        served["Work"] += 1
        if broken:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return b"ok"

    async def other(request: bytes, context: Any) -> bytes:
        served["Other"] += 1
        return b"other"

    clock = ManualClock()
    transitions: list[BreakerState] = []
    group = BreakerGroup(
        BreakerSettings(min_calls=4, failure_rate=0.5, open_for_s=30.0, half_open_probes=2),
        clock=clock,
        on_state_change=lambda b, old, new: transitions.append(new),
    )
    chain = client_chain(ClientBreakerInterceptor(group))
    async with (
        serve({"t.Svc": {"Work": unary(work), "Other": unary(other)}}) as target,
        grpc.aio.insecure_channel(target, interceptors=chain) as ch,
    ):
        work_call = ch.unary_unary("/t.Svc/Work")
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await work_call(b"", timeout=5)
            assert info.value.details() == "down"
        breaker = group.get("/t.Svc/Work")
        assert breaker.state is BreakerState.OPEN and served["Work"] == 4
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await work_call(b"", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit" in (info.value.details() or "") and not_executed(info.value)
        assert served["Work"] == 4
        assert await ch.unary_unary("/t.Svc/Other")(b"", timeout=5) == b"other"  # own breaker

        broken = False
        clock.advance(30.0)
        assert breaker.state is BreakerState.HALF_OPEN
        results = await asyncio.gather(*(work_call(b"", timeout=5) for _ in range(2)))
        assert results == [b"ok", b"ok"]
        assert breaker.state is BreakerState.CLOSED and served["Work"] == 6
        assert transitions == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_calls_refused_by_auth_never_spend_the_rate_limit_budget() -> None:
    async def work(request: bytes, context: Any) -> bytes:
        return b"done"

    limiter = RateLimiter(RateLimit(rate_per_s=0.001, burst=3), clock=ManualClock())
    chain = [ServerAuthInterceptor(["s3cret"]), ServerRateLimitInterceptor(limiter)]
    async with serve({"t.Svc": {"Work": unary(work)}}, chain) as target, \
            grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary("/t.Svc/Work")
        for _ in range(10):  # strangers: refused by auth, the budget stays whole
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        md = (("authorization", "Bearer s3cret"),)
        assert [await call(b"", metadata=md, timeout=5) for _ in range(3)] == [b"done"] * 3
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", metadata=md, timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_client_rate_limit_refuses_or_waits() -> None:
    served = 0

    async def work(request: bytes, context: Any) -> bytes:
        nonlocal served
        served += 1
        return b"ok"

    async with serve({"t.Svc": {"Work": unary(work)}}) as target:
        bucket = TokenBucket(1.0, 2, clock=ManualClock())
        chain = client_chain(ClientRateLimitInterceptor(bucket))
        async with grpc.aio.insecure_channel(target, interceptors=chain) as ch:
            results = await asyncio.gather(
                *(ch.unary_unary("/t.Svc/Work")(b"", timeout=5) for _ in range(5)),
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert results.count(b"ok") == 2 and served == 2
            assert (
                all(
                    r.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and not_executed(r)
                    for r in refused
                )
                and len(refused) == 3
            )

        waiting = client_chain(ClientRateLimitInterceptor(TokenBucket(50.0, 1), wait=True))
        async with grpc.aio.insecure_channel(target, interceptors=waiting) as ch:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for _ in range(4):
                assert await ch.unary_unary("/t.Svc/Work")(b"", timeout=5) == b"ok"
            assert loop.time() - start >= 3 / 50 - 0.01  # three waits of 20 ms


def _dumps(message: object) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def records(caplog: pytest.LogCaptureFixture, side: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "rpc_side", None) == side]


async def test_logging_emits_one_record_per_call_with_the_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="raftreg.resilience")

    async def say(request: bytes, context: Any) -> bytes:
        return request

    async def missing(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("unreachable")

    async def crash(request: bytes, context: Any) -> bytes:
        raise RuntimeError("bug")

    services = {"t.Log": {"Say": unary(say), "Missing": unary(missing), "Crash": unary(crash)}}
    async with serve(services, [ServerLoggingInterceptor()]) as target:
        chain = client_chain(ClientLoggingInterceptor(target=target))
        async with grpc.aio.insecure_channel(target, interceptors=chain) as ch:
            assert await ch.unary_unary("/t.Log/Say")(b"x", timeout=5) == b"x"
            for name, code in [
                ("Missing", grpc.StatusCode.NOT_FOUND),
                ("Crash", grpc.StatusCode.UNKNOWN),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.unary_unary(f"/t.Log/{name}")(b"", timeout=5)
                assert info.value.code() is code
        await wait_until(lambda: len(records(caplog, "server")) == 3)

    server = records(caplog, "server")
    by_method = {r.rpc_method: r for r in server}  # type: ignore[attr-defined]
    ok = by_method["/t.Log/Say"]
    assert ok.rpc_code == "OK" and ok.levelno == logging.INFO  # type: ignore[attr-defined]
    assert ok.rpc_peer.startswith("ipv4:127.0.0.1:")  # type: ignore[attr-defined]
    assert 0.0 <= ok.rpc_duration_ms < 5000  # type: ignore[attr-defined]
    assert "method=/t.Log/Say" in ok.getMessage() and "code=OK" in ok.getMessage()
    assert by_method["/t.Log/Missing"].rpc_code == "NOT_FOUND"  # type: ignore[attr-defined]
    assert by_method["/t.Log/Missing"].levelno == logging.WARNING
    assert by_method["/t.Log/Crash"].rpc_code == "UNKNOWN"  # type: ignore[attr-defined]

    client = records(caplog, "client")
    assert [r.rpc_code for r in client] == ["OK", "NOT_FOUND", "UNKNOWN"]  # type: ignore[attr-defined]
    assert all(r.rpc_peer == target for r in client)  # type: ignore[attr-defined]


async def test_every_call_kind_works_through_the_wrappers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four kinds (and the reader/writer API) behind logging, deadline and auth on both ends;
    the handlers' own serializers stay in place and see the propagated deadline."""
    caplog.set_level(logging.INFO, logger="raftreg.resilience")
    deadlines: list[Deadline | None] = []

    async def upper(request: list[str], context: Any) -> list[str]:
        deadlines.append(current_deadline())
        return [r.upper() for r in request]

    async def split(request: list[str], context: Any) -> AsyncIterator[list[str]]:
        deadlines.append(current_deadline())
        for ch in request[0]:
            yield [ch]

    async def split_rw(request: list[str], context: Any) -> None:
        deadlines.append(current_deadline())
        for ch in request[0]:
            await context.write([ch])

    async def join(requests: AsyncIterator[list[str]], context: Any) -> list[str]:
        deadlines.append(current_deadline())
        return ["".join([r[0] async for r in requests])]

    async def shout(requests: AsyncIterator[list[str]], context: Any) -> AsyncIterator[list[str]]:
        deadlines.append(current_deadline())
        async for r in requests:
            yield [r[0].upper()]

    # JSON lists on the wire: proves the wrapped handlers keep their (de)serializers
    codec = {"request_deserializer": json.loads, "response_serializer": _dumps}
    services = {
        "t.Kinds": {
            "Upper": grpc.unary_unary_rpc_method_handler(upper, **codec),
            "Split": grpc.unary_stream_rpc_method_handler(split, **codec),
            "SplitRW": grpc.unary_stream_rpc_method_handler(split_rw, **codec),
            "Join": grpc.stream_unary_rpc_method_handler(join, **codec),
            "Shout": grpc.stream_stream_rpc_method_handler(shout, **codec),
        }
    }
    server_chain = [
        ServerLoggingInterceptor(),
        ServerDeadlineInterceptor(),
        ServerAuthInterceptor(["tok"]),
    ]
    chain = client_chain(
        ClientLoggingInterceptor(),
        ClientDeadlineInterceptor(default_timeout_s=5.0),
        ClientAuthInterceptor("tok"),
    )

    async def requests() -> AsyncIterator[bytes]:
        for part in (b'["ab"]', b'["cd"]'):
            yield part

    async with (
        serve(services, server_chain) as target,
        grpc.aio.insecure_channel(target, interceptors=chain) as ch,
    ):
        assert await ch.unary_unary("/t.Kinds/Upper")(b'["abc"]') == b'["ABC"]'
        split_call = ch.unary_stream("/t.Kinds/Split")(b'["xy"]')
        assert [r async for r in split_call] == [b'["x"]', b'["y"]']
        split_rw_call = ch.unary_stream("/t.Kinds/SplitRW")(b'["xy"]')
        assert [r async for r in split_rw_call] == [b'["x"]', b'["y"]']
        assert await ch.stream_unary("/t.Kinds/Join")(requests()) == b'["abcd"]'
        shout_call = ch.stream_stream("/t.Kinds/Shout")(requests())
        assert [r async for r in shout_call] == [b'["AB"]', b'["CD"]']
        await wait_until(
            lambda: len(records(caplog, "server")) == 5 and len(records(caplog, "client")) == 5
        )
    assert len(deadlines) == 5
    remaining = [d.remaining() if d is not None else None for d in deadlines]
    assert all(r is not None and 0 < r <= 5.0 + WIRE for r in remaining), remaining
    assert {r.rpc_code for r in caplog.records if hasattr(r, "rpc_code")} == {"OK"}  # type: ignore[attr-defined]


async def test_synchronous_handlers_are_wrapped_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftreg.resilience")

    def sync_upper(request: bytes, context: Any) -> bytes:
        return request.upper()

    def sync_split(request: bytes, context: Any) -> Iterator[bytes]:
        for b in request:
            yield bytes([b])

    services = {
        "t.Sync": {
            "Upper": unary(sync_upper),
            "Split": grpc.unary_stream_rpc_method_handler(sync_split),
        }
    }
    with ThreadPoolExecutor(2) as pool:
        async with (
            serve(services, [ServerLoggingInterceptor(), ServerDeadlineInterceptor()], pool) as t,
            grpc.aio.insecure_channel(t) as ch,
        ):
            assert await ch.unary_unary("/t.Sync/Upper")(b"ab", timeout=5) == b"AB"
            assert [r async for r in ch.unary_stream("/t.Sync/Split")(b"ab", timeout=5)] == [
                b"a",
                b"b",
            ]
            await wait_until(lambda: len(records(caplog, "server")) == 2)
    assert [r.rpc_code for r in records(caplog, "server")] == ["OK", "OK"]  # type: ignore[attr-defined]
