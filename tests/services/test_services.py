"""The example services as real processes: the document's APIs, registration, balancing
through the gateway, retries on a dead instance, failure injection and graceful stop.

Gateways run with `GENEROUS_DEADLINE`: none of these tests is about deadlines, and a scheduling
stall must not turn an answer into a 504."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftreg.client import RegistryClient
from raftreg.discovery import decode_instance, instance_key, service_prefix
from services.pb import chat_pb2, chat_pb2_grpc, user_pb2, user_pb2_grpc
from services.testing import (
    ServiceGroup,
    get_json,
    instance_ids,
    post_json,
    send_user_traffic,
    wait_stats,
)
from tests.services.conftest import GENEROUS_DEADLINE, USER_WEIGHTS, Fleet

pytestmark = pytest.mark.slow  # every test runs against the module's processes


async def _set_policy(http: aiohttp.ClientSession, fleet: Fleet, policy: str) -> None:
    status, doc = await post_json(http, f"{fleet.gateway_url}/admin/policy", {"policy": policy})
    assert (status, doc) == (200, {"policy": policy})


async def _all_users_known(http: aiohttp.ClientSession, fleet: Fleet) -> None:
    await wait_stats(http, fleet.gateway_url, lambda s: instance_ids(s) == set(USER_WEIGHTS))


# ---------------------------------------------------------------------- the document's APIs


async def test_user_http_endpoint_answers_as_chapter_1(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    base = fleet.users["u1"].http_url
    async with http.get(f"{base}/user") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert r.headers["X-Served-By"] == "u1"
        assert await r.json() == {"id": 1, "name": "Alice"}
    assert await get_json(http, f"{base}/user?id=2") == (200, {"id": 2, "name": "Bob"})
    assert await get_json(http, f"{base}/user/3") == (200, {"id": 3, "name": "Carol"})
    status, doc = await get_json(http, f"{base}/user?id=99")
    assert status == 404 and "error" in doc
    status, doc = await get_json(http, f"{base}/user?id=alice")
    assert status == 400 and "error" in doc


async def test_get_user_over_grpc(fleet: Fleet) -> None:
    async with grpc.aio.insecure_channel(fleet.users["u2"].grpc) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        r = await stub.GetUser(user_pb2.GetUserRequest(user_id="1"), timeout=5)
        assert (r.name, r.age, r.served_by) == ("Alice", 30, "u2")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetUser(user_pb2.GetUserRequest(user_id=""), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetUser(user_pb2.GetUserRequest(user_id="99"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "example.UserService"):
            h = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert h.status == health_pb2.HealthCheckResponse.SERVING


async def test_chat_echoes_each_message_over_the_bidi_stream(fleet: Fleet) -> None:
    async with grpc.aio.insecure_channel(fleet.chat.grpc) as ch:
        call = chat_pb2_grpc.ChatServiceStub(ch).SyncStream(None, timeout=10)
        for text in ("hello", "", "你好"):
            before = time.time_ns() // 1_000_000
            # one message, one answer, before the next is sent: the server streams, it does
            # not wait for the client to finish
            await call.write(chat_pb2.Message(content=text, timestamp=before))
            reply = await call.read()
            after = time.time_ns() // 1_000_000
            assert isinstance(reply, chat_pb2.Message)
            assert reply.content == "Echo: " + text
            assert before <= reply.timestamp <= after
            assert reply.served_by == "c1"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await call.code() == grpc.StatusCode.OK


async def test_instances_are_registered_with_their_grpc_address(
    fleet: Fleet, registry: RegistryClient
) -> None:
    res = await registry.get(service_prefix("user"), prefix=True)
    found = {i.id: i for i in (decode_instance(kv.key, kv.value) for kv in res.kvs)}
    assert set(found) == set(USER_WEIGHTS)
    for uid, w in USER_WEIGHTS.items():
        assert found[uid].address == fleet.users[uid].grpc
        assert found[uid].weight == w
        assert found[uid].metadata["http"] == fleet.users[uid].http
    res = await registry.get(instance_key("gateway", "g1"))
    assert decode_instance(res.kvs[0].key, res.kvs[0].value).address == fleet.gateway.http
    res = await registry.get(instance_key("chat", "c1"))
    assert decode_instance(res.kvs[0].key, res.kvs[0].value).address == fleet.chat.grpc


# ---------------------------------------------------------------------- balancing


async def test_weighted_round_robin_spreads_1_2_3(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    await _all_users_known(http, fleet)
    await _set_policy(http, fleet, "weighted_round_robin")  # fresh balancer state
    before = (await get_json(http, f"{fleet.gateway_url}/stats"))[1]["served"]
    t = await send_user_traffic(http, fleet.gateway_url, 600, concurrency=12)
    assert t.failures == 0, t.failed
    for uid, w in USER_WEIGHTS.items():
        assert abs(t.served[uid] - 100 * w) <= 2, t.served
    after = (await get_json(http, f"{fleet.gateway_url}/stats"))[1]["served"]
    assert {u: after.get(u, 0) - before.get(u, 0) for u in USER_WEIGHTS} == dict(t.served)


async def test_round_robin_spreads_evenly(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    await _all_users_known(http, fleet)
    await _set_policy(http, fleet, "round_robin")
    try:
        t = await send_user_traffic(http, fleet.gateway_url, 600, concurrency=12)
    finally:
        await _set_policy(http, fleet, "weighted_round_robin")
    assert t.failures == 0, t.failed
    assert all(abs(t.served[u] - 200) <= 2 for u in USER_WEIGHTS), t.served


async def test_consistent_hash_sends_a_key_to_one_instance(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    await _all_users_known(http, fleet)
    await _set_policy(http, fleet, "consistent_hash")
    try:
        owner: dict[str, set[str]] = collections.defaultdict(set)
        for k in range(24):
            t = await send_user_traffic(http, fleet.gateway_url, 8, key=f"session-{k}")
            assert t.failures == 0, t.failed
            owner[f"session-{k}"] |= set(t.served)
        # without a key header the user id is the key
        by_user = await send_user_traffic(http, fleet.gateway_url, 10, user_ids=[4])
    finally:
        await _set_policy(http, fleet, "weighted_round_robin")
    assert all(len(v) == 1 for v in owner.values()), owner
    assert len(set().union(*owner.values())) > 1, owner  # keys do spread over instances
    assert len(by_user.served) == 1 and by_user.ok == 10, by_user


async def test_gateway_maps_errors_to_http(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    gw = fleet.gateway_url
    status, doc = await get_json(http, f"{gw}/user?id=99")
    assert (status, doc["code"]) == (404, "NOT_FOUND")
    status, doc = await get_json(http, f"{gw}/user/x")
    assert (status, doc["code"]) == (400, "INVALID_ARGUMENT")
    status, doc = await get_json(http, f"{gw}/user/2")
    assert status == 200 and (doc["id"], doc["name"], doc["age"]) == (2, "Bob", 25)
    assert doc["served_by"] in USER_WEIGHTS
    status, doc = await post_json(http, f"{gw}/admin/policy", {"policy": "fastest"})
    assert status == 400 and "round_robin" in doc["policies"]
    status, doc = await post_json(http, f"{gw}/chat", {"content": "hi"})
    assert (status, doc["content"], doc["served_by"]) == (200, "Echo: hi", "c1")


async def test_gateway_without_instances_answers_503(
    group: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    gw = await asyncio.to_thread(
        group.start_service, "gateway", "g-empty", "--service", "gateway-empty",
        "--user-service", "user-nobody", "--chat-service", "chat-nobody", *GENEROUS_DEADLINE,
    )
    status, doc = await get_json(http, f"{gw.http_url}/user?id=1")
    assert (status, doc["code"]) == (503, "NO_INSTANCE")
    status, doc = await post_json(http, f"{gw.http_url}/chat", {"content": "hi"})
    assert (status, doc["code"]) == (503, "NO_INSTANCE")
    status, _ = await get_json(http, f"{gw.http_url}/healthz")
    assert status == 503


# ---------------------------------------------------------------------- resilience


async def test_call_to_a_killed_instance_is_retried_on_another(
    group: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    # TTL 30: the dead instance stays registered through the test, so every call the
    # balancer sends to it must be saved by the gateway's retry, not by discovery.
    svc = "user-kill"
    await asyncio.to_thread(group.start_many, [
        ("user", f"k{i}", ["--service", svc, "--ttl", "30"]) for i in (1, 2, 3)
    ] + [("gateway", "g-kill", ["--service", "gateway-kill", "--user-service", svc,
                                 "--policy", "round_robin", *GENEROUS_DEADLINE])])
    gw = group.ready["g-kill"].http_url
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"k1", "k2", "k3"})
    group.kill("k2")
    t = await send_user_traffic(http, gw, 90, concurrency=6)
    assert t.failures == 0, t.failed
    assert set(t.served) == {"k1", "k3"} and t.ok == 90
    stats = (await get_json(http, f"{gw}/stats"))[1]
    assert "k2" in instance_ids(stats)  # still registered: it was the retry that saved them


async def test_failure_injection_affects_exactly_the_share_asked_for(
    fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    admin = f"{fleet.users['u3'].http_url}/admin/fail"
    assert (await post_json(http, admin, {"rate": 2}))[0] == 400
    assert (await post_json(http, admin, {"rate": 0.5, "code": "NOPE"}))[0] == 400
    assert (await post_json(http, admin, {"rate": 0.5}))[0] == 400  # nothing to inject
    try:
        status, doc = await post_json(http, admin, {"rate": 0.5, "code": "internal"})
        assert status == 200 and doc["code"] == "INTERNAL"
        codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        async with grpc.aio.insecure_channel(fleet.users["u3"].grpc) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            for _ in range(10):
                try:
                    await stub.GetUser(user_pb2.GetUserRequest(user_id="1"), timeout=5)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code()] += 1
            assert codes == {grpc.StatusCode.OK: 5, grpc.StatusCode.INTERNAL: 5}
            status, doc = await get_json(http, admin)
            assert (doc["calls"], doc["injected"]) == (10, 5)

            await post_json(http, admin, {"rate": 1.0, "delay_ms": 400})
            with pytest.raises(grpc.aio.AioRpcError) as slow:
                await stub.GetUser(user_pb2.GetUserRequest(user_id="1"), timeout=0.1)
            assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            t0 = time.monotonic()
            r = await stub.GetUser(user_pb2.GetUserRequest(user_id="1"), timeout=5)
            assert r.name == "Alice" and time.monotonic() - t0 >= 0.35
    finally:
        assert (await post_json(http, admin, {"rate": 0}))[0] == 200


async def test_sigterm_deregisters_at_once(
    group: ServiceGroup, http: aiohttp.ClientSession, registry: RegistryClient
) -> None:
    svc = "user-term"
    ttl = 30
    await asyncio.to_thread(group.start_many, [
        ("user", "t1", ["--service", svc, "--ttl", str(ttl)]),
        ("gateway", "g-term", ["--service", "gateway-term", "--user-service", svc,
                               *GENEROUS_DEADLINE]),
    ])
    gw = group.ready["g-term"].http_url
    await wait_stats(http, gw, lambda s: instance_ids(s) == {"t1"})
    assert (await registry.get(instance_key(svc, "t1"))).count == 1

    # The key is gone as soon as the process has exited: revoked, not expired (terminate waits
    # at most 15 s, and the lease, renewed about every ttl/3 = 10 s until SIGTERM, cannot expire
    # within ~19 s of it). The process says so, and logged no failed revoke ("... the key goes
    # when lease ... expires").
    assert await asyncio.to_thread(group.terminate, "t1", 15.0) == 0
    assert (await registry.get(instance_key(svc, "t1"))).count == 0
    log = group.log_text("t1")
    assert "deregistered /services/user-term/t1" in log, log[-2000:]
    assert "the key goes when lease" not in log, log[-2000:]
    await wait_stats(http, gw, lambda s: instance_ids(s) == set(), timeout=15)
    status, doc = await get_json(http, f"{gw}/user?id=1")
    assert (status, doc["code"]) == (503, "NO_INSTANCE")

    assert await asyncio.to_thread(group.terminate, "g-term", 15.0) == 0
    assert (await registry.get(instance_key("gateway-term", "g-term"))).count == 0
