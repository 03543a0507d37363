"""The example user service: `UserService.GetUser` over gRPC and chapter 1's `/user` over HTTP.

`python -m services.user --id u1 --weight 2 --ttl 3 --registry raftreg://127.0.0.1:23791`
registers as service `user` with its gRPC address (the HTTP address is in the metadata).

gRPC `example.UserService/GetUser`: the user with that id from a small fixed table, with
`served_by` = this instance's id; an empty id is INVALID_ARGUMENT, an unknown one NOT_FOUND.
The gRPC server runs `services.runtime`'s interceptor chain: logging, deadline, and with
`--token TOKEN` (or $RAFTREG_SERVICE_TOKEN) bearer-token auth (a call without an accepted token
is UNAUTHENTICATED and never reaches GetUser), with `--rate-limit RPS` a server-side limit
(RESOURCE_EXHAUSTED above it). GetUser sends the remaining time of its call's deadline, as it
saw it, in the trailing metadata `deadline-remaining-ms` (absent without a deadline).

HTTP (on `--host`, loopback by default):
- `GET /user?id=N`, `GET /user/{id}`: `{"id": N, "name": ...}` as in chapter 1 (`GET /user`
  without an id is user 1, `{"id":1,"name":"Alice"}`); 400 for a non-integer id, 404 for an
  unknown one. The answering instance is in the `X-Served-By` header.
- Failure injection, for resilience tests: `POST /admin/fail` with
  `{"rate": 0.0..1.0, "code": "UNAVAILABLE" | "INTERNAL" | ... | null, "delay_ms": 0}` makes
  exactly that share of the following GetUser calls (deterministically spread: of any n calls,
  floor or ceil of n x rate) wait `delay_ms` and then fail with `code` (or succeed when `code`
  is null). `{"rate": 0}` turns it off. `GET /admin/fail` shows the setting and the GetUser
  calls / injected faults since it was made.
- `GET /admin/calls`: the GetUser calls that reached the method (past auth, rate limit and
  deadline checks) since start, and the remaining deadline they saw (ms; `last` of the latest
  call, `min` and `max` over all; null while no call had a deadline; `without_deadline` counts
  calls that had none), for tests of deadline propagation.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio
from aiohttp import web

from raftreg.resilience import current_deadline
from services.pb import user_pb2, user_pb2_grpc
from services.runtime import (
    ServiceRuntime,
    ServiceSettings,
    run_service,
    service_parser,
    settings_from_args,
)

SERVED_BY_HEADER = "X-Served-By"
DEADLINE_METADATA = "deadline-remaining-ms"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    age: int


USERS: Mapping[str, User] = MappingProxyType({
    str(u.id): u
    for u in (
        User(1, "Alice", 30),
        User(2, "Bob", 25),
        User(3, "Carol", 35),
        User(4, "Dave", 41),
        User(5, "Eve", 28),
    )
})


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one affected call: wait `delay_ms`, then fail with `code` (if any)."""

    code: grpc.StatusCode | None
    delay_ms: int


class FailureInjector:
    """Affects exactly `rate` of the calls, spread evenly (error diffusion, no randomness).
    `calls` and `injected` count since the last `configure`."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.code: grpc.StatusCode | None = None
        self.delay_ms = 0
        self._credit = 0.0
        self.calls = 0
        self.injected = 0

    def configure(self, rate: float, code: grpc.StatusCode | None, delay_ms: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if code == grpc.StatusCode.OK:
            raise ValueError("code OK injects nothing; use null for a delay only")
        if rate > 0 and code is None and delay_ms == 0:
            raise ValueError("give a code, a delay_ms, or both")
        self.rate, self.code, self.delay_ms = rate, code, delay_ms
        self._credit = 0.0
        self.calls = self.injected = 0

    def take(self) -> Fault | None:
        """The fault for the next call (None: serve it normally)."""
        self.calls += 1
        if self.rate <= 0.0:
            return None
        self._credit += self.rate
        if self._credit < 1.0 - 1e-9:
            return None
        self._credit -= 1.0
        self.injected += 1
        return Fault(self.code, self.delay_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "code": self.code.name if self.code is not None else None,
            "delay_ms": self.delay_ms,
            "calls": self.calls,
            "injected": self.injected,
        }


class CallLog:
    """GetUser calls that reached the method, and the remaining deadline each one saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.without_deadline = 0
        self.last_ms: float | None = None
        self.min_ms: float | None = None
        self.max_ms: float | None = None

    def record(self, remaining_ms: float | None) -> None:
        self.calls += 1
        if remaining_ms is None:
            self.without_deadline += 1
            return
        self.last_ms = remaining_ms
        self.min_ms = remaining_ms if self.min_ms is None else min(self.min_ms, remaining_ms)
        self.max_ms = remaining_ms if self.max_ms is None else max(self.max_ms, remaining_ms)

    def to_json(self) -> dict[str, Any]:
        def ms(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {
            "calls": self.calls,
            "without_deadline": self.without_deadline,
            "deadline_ms": {"last": ms(self.last_ms), "min": ms(self.min_ms),
                            "max": ms(self.max_ms)},
        }


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(
        self,
        instance_id: str,
        faults: FailureInjector,
        users: Mapping[str, User] = USERS,
        calls: CallLog | None = None,
    ) -> None:
        self._id = instance_id
        self._faults = faults
        self._users = users
        self.calls = calls or CallLog()

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        # the deadline interceptor made the call's deadline the current one
        deadline = current_deadline()
        remaining_ms = None if deadline is None else deadline.remaining() * 1000
        self.calls.record(remaining_ms)
        if remaining_ms is not None:
            context.set_trailing_metadata(((DEADLINE_METADATA, f"{remaining_ms:.3f}"),))
        fault = self._faults.take()
        if fault is not None:
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            if fault.code is not None:
                await context.abort(fault.code, f"injected failure on {self._id}")
        user_id = request.user_id.strip()
        if not user_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is empty")
        user = self._users.get(user_id)
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no user {user_id!r}")
        return user_pb2.GetUserResponse(name=user.name, age=user.age, served_by=self._id)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class UserHttp:
    """Chapter 1's `/user` endpoint, the failure-injection switch and the call log."""

    def __init__(
        self,
        instance_id: str,
        faults: FailureInjector,
        users: Mapping[str, User] = USERS,
        calls: CallLog | None = None,
    ) -> None:
        self._id = instance_id
        self._faults = faults
        self._users = users
        self._calls = calls or CallLog()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/user", self.get_user)
        app.router.add_get("/user/{id}", self.get_user)
        app.router.add_get("/admin/fail", self.get_fail)
        app.router.add_post("/admin/fail", self.set_fail)
        app.router.add_get("/admin/calls", self.get_calls)

    async def get_calls(self, request: web.Request) -> web.Response:
        return web.json_response(self._calls.to_json())

    async def get_user(self, request: web.Request) -> web.Response:
        raw = request.match_info.get("id") or request.query.get("id") or "1"
        try:
            uid = int(raw)
        except ValueError:
            return _error(400, f"id {raw!r} is not an integer")
        user = self._users.get(str(uid))
        if user is None:
            return _error(404, f"no user {uid}")
        return web.json_response(
            {"id": user.id, "name": user.name}, headers={SERVED_BY_HEADER: self._id}
        )

    async def get_fail(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults.to_json())

    async def set_fail(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            rate = float(doc.get("rate", 0.0))
            code_name = doc.get("code")
            code = None
            if code_name is not None:
                code = grpc.StatusCode.__members__.get(str(code_name).upper())
                if code is None:
                    raise ValueError(f"unknown status code {code_name!r}")
            delay_ms = int(doc.get("delay_ms", 0))
            self._faults.configure(rate, code, delay_ms)
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        return web.json_response(self._faults.to_json())


def build(settings: ServiceSettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, http=True, health_services=["example.UserService"])
    faults = FailureInjector()
    calls = CallLog()
    user_pb2_grpc.add_UserServiceServicer_to_server(
        UserServicer(settings.id, faults, calls=calls), rt.grpc_server
    )
    assert rt.http_app is not None
    UserHttp(settings.id, faults, calls=calls).add_routes(rt.http_app)
    return rt


def main(argv: Sequence[str] | None = None) -> int:
    p = service_parser("user", "The example UserService (gRPC) and /user (HTTP).")
    return run_service(settings_from_args(p.parse_args(argv)), build)


if __name__ == "__main__":
    sys.exit(main())
