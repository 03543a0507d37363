"""Interceptor parts without a network: the expired-deadline refusal, token checks, method
sets and method names."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from raftreg.resilience import (
    NOT_EXECUTED_KEY,
    MethodSet,
    ServerAuthInterceptor,
    ServerDeadlineInterceptor,
    current_deadline,
)
from raftreg.resilience.rpc import method_name, split_method


class FakeContext:
    """The parts of a grpc.aio servicer context the deadline interceptor uses."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.trailing: Any = ()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError(details)


class Details:
    def __init__(self, method: str, metadata: Any = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def wrapped_behavior(interceptor: Any, behavior: Any) -> Any:
    async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(behavior)

    handler = await interceptor.intercept_service(continuation, Details("/t.S/M"))
    return handler.unary_unary


async def test_a_call_whose_deadline_passed_is_refused_before_the_behaviour() -> None:
    ran: list[Any] = []

    async def behavior(request: bytes, context: Any) -> bytes:
        ran.append(current_deadline())
        return b"ok"

    wrapped = await wrapped_behavior(ServerDeadlineInterceptor(), behavior)
    late = FakeContext(remaining=0.0)
    with pytest.raises(grpc.aio.AbortError):
        await wrapped(b"", late)
    assert ran == [] and late.aborted is not None
    assert late.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (NOT_EXECUTED_KEY, "1") in late.trailing

    assert await wrapped(b"", FakeContext(remaining=3.0)) == b"ok"
    assert ran[0] is not None and 2.9 < ran[0].remaining() <= 3.0
    assert current_deadline() is None  # restored after the behaviour

    lenient = await wrapped_behavior(ServerDeadlineInterceptor(reject_expired=False), behavior)
    assert await lenient(b"", FakeContext(remaining=0.0)) == b"ok"
    unbounded = await wrapped_behavior(ServerDeadlineInterceptor(), behavior)
    assert await unbounded(b"", FakeContext(remaining=None)) == b"ok" and ran[-1] is None


async def test_unknown_methods_are_left_to_grpc() -> None:
    async def continuation(_: Any) -> None:
        return None

    for interceptor in (ServerDeadlineInterceptor(), ServerAuthInterceptor(["t"])):
        assert await interceptor.intercept_service(continuation, Details("/x/Y")) is None


def test_token_checks() -> None:
    auth = ServerAuthInterceptor(["alpha", "beta"])
    assert auth.authorized((("authorization", "Bearer beta"),))
    assert auth.authorized((("Authorization", b"bearer alpha"),))
    assert auth.authorized((("authorization", "  Bearer   alpha  "),))
    assert not auth.authorized(())
    assert not auth.authorized((("authorization", "Bearer gamma"),))
    assert not auth.authorized((("authorization", "Bearer alphaX"),))
    assert not auth.authorized((("authorization", "Bearer alpha"), ("authorization", "Bearer x")))
    assert not auth.authorized((("x-token", "Bearer alpha"),))
    with pytest.raises(ValueError):
        ServerAuthInterceptor([""])
    assert auth.is_exempt("/grpc.health.v1.Health/Check")
    assert not auth.is_exempt("/grpc.health.v1.HealthX/Check")
    auth.configure(exempt=["t.S/Open"])
    assert auth.is_exempt("/t.S/Open") and not auth.is_exempt("/grpc.health.v1.Health/Check")


def test_method_sets_and_names() -> None:
    s = MethodSet(["pkg.Users", "/pkg.Orders/Get", "pkg.Orders/List"])
    assert "/pkg.Users/Anything" in s and s("/pkg.Orders/Get") and s("/pkg.Orders/List")
    assert "/pkg.Orders/Create" not in s and "/pkg.UsersX/Get" not in s and 3 not in s
    assert split_method("/pkg.S/M") == ("pkg.S", "M")
    assert split_method("weird") == ("", "weird")
    assert split_method("/a/b/c") == ("", "/a/b/c")
    assert method_name(b"/pkg.S/M") == "/pkg.S/M"
