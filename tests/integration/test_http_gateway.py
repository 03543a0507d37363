"""The etcd-style HTTP/JSON gateway (`/v3/...`) on real node processes, over aiohttp's client.

Bodies are written the way etcd's documentation writes them for curl: base64 bytes, int64 as
JSON strings in answers, proto field names.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TIMEOUT = aiohttp.ClientTimeout(total=15)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        yield s


async def post(s: aiohttp.ClientSession, addr: str, path: str,
               body: Any = None, *, raw: bytes | str | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps({} if body is None else body)
    async with s.post(f"http://{addr}{path}", data=data) as r:
        text = await r.text()
        return r.status, json.loads(text)


async def ok(s: aiohttp.ClientSession, addr: str, path: str, body: Any = None) -> Any:
    status, out = await post(s, addr, path, body)
    assert status == 200, (path, out)
    return out


async def revision(s: aiohttp.ClientSession, addr: str) -> int:
    out = await ok(s, addr, "/v3/kv/range", {"key": b64("gw/no-such-key")})
    return int(out["header"]["revision"])


def follower_of(c: ProcessCluster) -> tuple[str, str]:
    leader = c.wait_leader()
    return leader, next(n for n in c.names if n != leader)


async def test_document_curl_example_on_leader_and_follower(
    shared_cluster: ProcessCluster, http: aiohttp.ClientSession
) -> None:
    c = shared_cluster
    leader, follower = follower_of(c)
    # curl -L http://localhost:2379/v3/kv/put -X POST -d '{"key": "Zm9v", "value": "YmFy"}'
    async with http.post(f"http://{c.http[leader]}/v3/kv/put",
                         data='{"key": "Zm9v", "value": "YmFy"}') as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        put = await r.json()
    put_rev = put["header"]["revision"]
    assert isinstance(put_rev, str) and int(put_rev) >= 2
    assert isinstance(put["header"]["cluster_id"], str)
    assert set(put["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}

    got = await ok(http, c.http[leader], "/v3/kv/range", {"key": "Zm9v"})
    (kv,) = got["kvs"]
    assert kv["key"] == "Zm9v" and kv["value"] == "YmFy"
    assert kv["mod_revision"] == put_rev and isinstance(kv["create_revision"], str)
    assert "lease" not in kv and "more" not in got  # zero values are omitted, as in etcd
    assert got["count"] == "1"
    assert int(got["header"]["revision"]) >= int(put_rev)

    # A follower's gateway: its write is forwarded to the leader, its read is linearizable.
    put2 = await ok(http, c.http[follower], "/v3/kv/put",
                    {"key": b64("gw/follower"), "value": b64("via follower"), "prev_kv": True})
    assert int(put2["header"]["revision"]) > int(put_rev)
    assert "prev_kv" not in put2
    for node in (follower, leader):
        got = await ok(http, c.http[node], "/v3/kv/range", {"key": b64("gw/follower")})
        assert unb64(got["kvs"][0]["value"]) == "via follower"
    # lowerCamelCase JSON names are accepted on input, like etcd's gateway
    got = await ok(http, c.http[follower], "/v3/kv/range",
                   {"key": b64("gw/follower"), "keysOnly": True, "serializable": True})
    assert "value" not in got["kvs"][0]


async def test_txn_deleterange_compaction(
    shared_cluster: ProcessCluster, http: aiohttp.ClientSession
) -> None:
    addr = shared_cluster.http[shared_cluster.wait_leader()]
    await ok(http, addr, "/v3/kv/put", {"key": b64("gw/txn/k"), "value": b64("v1")})
    txn = {
        "compare": [{"key": b64("gw/txn/k"), "target": "VALUE", "result": "EQUAL",
                     "value": b64("v1")}],
        "success": [{"request_put": {"key": b64("gw/txn/k"), "value": b64("v2")}},
                    {"request_range": {"key": b64("gw/txn/k")}}],
        "failure": [{"request_range": {"key": b64("gw/txn/k")}}],
    }
    out = await ok(http, addr, "/v3/kv/txn", txn)
    assert out["succeeded"] is True
    put_resp, range_resp = out["responses"]
    assert "header" in put_resp["response_put"]
    assert unb64(range_resp["response_range"]["kvs"][0]["value"]) == "v2"
    out = await ok(http, addr, "/v3/kv/txn", txn)  # the value is v2 now: the failure branch
    assert "succeeded" not in out  # false is omitted, as in etcd
    (failure,) = out["responses"]
    assert unb64(failure["response_range"]["kvs"][0]["value"]) == "v2"

    for k in ("a", "b"):
        await ok(http, addr, "/v3/kv/put", {"key": b64(f"gw/del/{k}"), "value": b64(k * 2)})
    out = await ok(http, addr, "/v3/kv/deleterange",
                   {"key": b64("gw/del/"), "range_end": b64("gw/del0"), "prev_kv": True})
    assert out["deleted"] == "2"
    assert [(unb64(kv["key"]), unb64(kv["value"])) for kv in out["prev_kvs"]] == [
        ("gw/del/a", "aa"), ("gw/del/b", "bb")]
    got = await ok(http, addr, "/v3/kv/range", {"key": b64("gw/del/"), "range_end": b64("gw/del0")})
    assert "kvs" not in got

    rev = await revision(http, addr)
    out = await ok(http, addr, "/v3/kv/compaction", {"revision": str(rev)})
    assert int(out["header"]["revision"]) >= rev
    status, err = await post(http, addr, "/v3/kv/range", {"key": b64("gw/txn/k"),
                                                          "revision": rev - 1})
    assert status == 400 and err["code"] == 11, err  # OUT_OF_RANGE: compacted
    status, err = await post(http, addr, "/v3/kv/compaction", {"revision": rev + 1000})
    assert status == 400 and err["code"] == 11, err  # OUT_OF_RANGE: future revision


async def test_lease_lifecycle(shared_cluster: ProcessCluster,
                               http: aiohttp.ClientSession) -> None:
    c = shared_cluster
    leader, follower = follower_of(c)
    addr = c.http[follower]  # lease calls that only the leader serves are relayed
    grant = await ok(http, addr, "/v3/lease/grant", {"TTL": 30})
    lease_id, ttl = grant["ID"], grant["TTL"]
    assert isinstance(lease_id, str) and int(lease_id) > 0 and ttl == "30"
    await ok(http, addr, "/v3/kv/put",
             {"key": b64("gw/lease/k"), "value": b64("v"), "lease": lease_id})
    got = await ok(http, addr, "/v3/kv/range", {"key": b64("gw/lease/k")})
    assert got["kvs"][0]["lease"] == lease_id

    ttl_info = await ok(http, addr, "/v3/lease/timetolive", {"ID": lease_id, "keys": True})
    assert ttl_info["ID"] == lease_id and ttl_info["grantedTTL"] == "30"
    assert 0 < int(ttl_info["TTL"]) <= 30
    assert ttl_info["keys"] == [b64("gw/lease/k")]
    leases = await ok(http, addr, "/v3/lease/leases")
    assert {"ID": lease_id} in leases["leases"]
    on_leader = await ok(http, c.http[leader], "/v3/kv/lease/leases")  # etcd's alias path
    assert {"ID": lease_id} in on_leader["leases"]

    async with http.post(f"http://{addr}/v3/lease/keepalive",
                         data=json.dumps({"ID": lease_id})) as r:
        assert r.status == 200 and r.content_type == "application/json"
        lines = (await r.text()).splitlines()
    (line,) = lines
    ka = json.loads(line)["result"]
    assert ka["ID"] == lease_id and ka["TTL"] == "30"

    await ok(http, addr, "/v3/kv/lease/revoke", {"ID": lease_id})  # etcd's alias path
    got = await ok(http, addr, "/v3/kv/range", {"key": b64("gw/lease/k")})
    assert "kvs" not in got
    gone = await ok(http, addr, "/v3/kv/lease/timetolive", {"ID": lease_id})
    assert gone["TTL"] == "-1"
    status, err = await post(http, addr, "/v3/lease/revoke", {"ID": lease_id})
    assert status == 404, err
    assert err["code"] == 5 and err["error"] == err["message"] and "lease" in err["message"]
    # an unknown lease's keepalive answers TTL 0 (omitted), as in etcd
    async with http.post(f"http://{addr}/v3/lease/keepalive",
                         data=json.dumps({"ID": lease_id})) as r:
        assert r.status == 200
        assert "TTL" not in json.loads(await r.text())["result"]


async def watchers(http: aiohttp.ClientSession, addr: str) -> int:
    st = await ok(http, addr, "/v3/maintenance/status")
    return int(st.get("watchers", "0"))


async def read_line(r: aiohttp.ClientResponse) -> Any:
    line = await asyncio.wait_for(r.content.readline(), 10)
    assert line.endswith(b"\n"), f"stream ended: {line!r}"
    return json.loads(line)


async def test_watch_stream_and_disconnect(shared_cluster: ProcessCluster,
                                           http: aiohttp.ClientSession) -> None:
    c = shared_cluster
    leader, follower = follower_of(c)
    waddr = c.http[follower]
    before = await watchers(http, waddr)
    body = {"create_request": {"key": b64("gw/w/"), "range_end": b64("gw/w0")}}
    r = await http.post(f"http://{waddr}/v3/watch", data=json.dumps(body),
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    try:
        assert r.status == 200 and r.content_type == "application/json"
        assert r.headers.get("Transfer-Encoding") == "chunked"
        created = (await read_line(r))["result"]
        assert created["created"] is True and "events" not in created
        assert await watchers(http, waddr) == before + 1
        revs = []
        for k in ("one", "two"):
            put = await ok(http, c.http[leader], "/v3/kv/put",
                           {"key": b64(f"gw/w/{k}"), "value": b64(k.upper())})
            revs.append(put["header"]["revision"])
        await ok(http, c.http[leader], "/v3/kv/put", {"key": b64("gw/x"), "value": b64("no")})
        events: list[dict[str, Any]] = []
        while len(events) < 2:
            res = (await read_line(r))["result"]
            assert res.get("watch_id", "0") == created.get("watch_id", "0")
            events += res["events"]
        assert [(e.get("type", "PUT"), unb64(e["kv"]["key"]), unb64(e["kv"]["value"]),
                 e["kv"]["mod_revision"]) for e in events] == [
            ("PUT", "gw/w/one", "ONE", revs[0]), ("PUT", "gw/w/two", "TWO", revs[1])]
        assert "type" not in events[0]  # PUT is the zero value: omitted, as in etcd
    finally:
        r.close()  # drops the connection: the gateway cancels the server-side watch
    deadline = time.monotonic() + 10
    while await watchers(http, waddr) != before:
        assert time.monotonic() < deadline, "the closed HTTP stream's watch was not cancelled"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("raw", "needle"), [
    ('{"key": "Zm9v", "value": ', "invalid JSON"),
    ('{"key": "Zm9v", "value": "YmFy", "bogus": 1}', "bogus"),
    ('{"key": "not base64!", "value": "YmFy"}', "base64"),
    ('{"key": 5, "value": "YmFy"}', "key"),
    ('{"key": "Zm9v", "lease": "abc"}', "lease"),
    ('{"key": "Zm9v", "key": "YmFy"}', "duplicate"),
    ('["Zm9v"]', "JSON object"),
    ('{"value": "YmFy"}', "key"),  # empty key: rejected by the gRPC API itself
])
async def test_bad_input_is_400_and_changes_nothing(
    shared_cluster: ProcessCluster, http: aiohttp.ClientSession, raw: str, needle: str
) -> None:
    addr = shared_cluster.http[shared_cluster.names[0]]
    rev = await revision(http, addr)
    status, err = await post(http, addr, "/v3/kv/put", raw=raw)
    assert status == 400, err
    assert set(err) == {"error", "code", "message"} and err["code"] == 3
    assert err["error"] == err["message"] and needle in err["message"], err
    assert await revision(http, addr) == rev


async def test_sizes_paths_and_methods(shared_cluster: ProcessCluster,
                                       http: aiohttp.ClientSession) -> None:
    addr = shared_cluster.http[shared_cluster.names[0]]
    # A 1.2 MB value (1.6 MB of JSON, beyond aiohttp's default 1 MiB body limit) is accepted.
    value = "v" * 1_200_000
    await ok(http, addr, "/v3/kv/put", {"key": b64("gw/big"), "value": b64(value)})
    got = await ok(http, addr, "/v3/kv/range", {"key": b64("gw/big")})
    assert unb64(got["kvs"][0]["value"]) == value
    rev = await revision(http, addr)
    status, err = await post(http, addr, "/v3/kv/put",  # above max_value_bytes: the API says no
                             {"key": b64("gw/big"), "value": b64("v" * 2_000_000)})
    assert status == 400 and "too large" in err["message"], err
    status, err = await post(http, addr, "/v3/watch", raw='{"create_request": {"key": 1}}')
    assert status == 400 and err["code"] == 3
    status, err = await post(http, addr, "/v3/auth/enable")
    assert status == 404 and err["code"] == 5
    async with http.get(f"http://{addr}/v3/kv/range") as r:
        assert r.status == 405 and (await r.json())["code"] == 12
    big = json.dumps({"key": b64("gw/big"), "value": "A" * (4 << 20)})
    status, err = await post(http, addr, "/v3/kv/put", raw=big)
    assert status == 413 and err["code"] == 8
    assert await revision(http, addr) == rev


async def test_member_list_and_status(shared_cluster: ProcessCluster,
                                      http: aiohttp.ClientSession) -> None:
    c = shared_cluster

    async def snapshot() -> tuple[str, dict[str, Any], dict[str, Any]]:
        leader = await asyncio.to_thread(c.wait_leader)
        lists = {n: (await ok(http, c.http[n], "/v3/cluster/member/list"))["members"]
                 for n in c.names}
        sts = {n: await ok(http, c.http[n], "/v3/maintenance/status", None) for n in c.names}
        return leader, lists, sts

    def leader_id(lists: dict[str, Any], n: str, name: str) -> str | None:
        return next((m["ID"] for m in lists[n] if m["name"] == name), None)

    # The leader and each node's answers come from separate calls: an election between two
    # of them is no disagreement, so the whole snapshot is retaken until every node names
    # the leader (bounded: a lasting disagreement still fails).
    deadline = time.monotonic() + 10
    while True:
        leader, lists, sts = await snapshot()
        if all(sts[n]["leader"] == leader_id(lists, n, leader) for n in c.names):
            break
        assert time.monotonic() < deadline, ("the nodes do not agree on the leader", leader, sts)
        await asyncio.sleep(0.05)
    for n in c.names:
        members = lists[n]
        assert sorted(m["name"] for m in members) == sorted(c.names)
        assert all(isinstance(m["ID"], str) for m in members)
        by_name = {m["name"]: m for m in members}
        assert by_name[n]["clientURLs"] == [f"http://{c.client[n]}"]
        st = sts[n]
        assert st["name"] == n and st["version"]
        assert st["leader"] == by_name[leader]["ID"]
        assert st["header"]["member_id"] == by_name[n]["ID"]
    # an empty body is an empty request, as with etcd's gateway
    async with http.post(f"http://{c.http[leader]}/v3/maintenance/status") as r:
        assert r.status == 200 and (await r.json())["name"] == leader


async def test_node_shutdown_ends_open_watch_streams(tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    with ProcessCluster(tmp_path / "one", size=1) as c:
        c.start()
        (n,) = c.names
        c.wait_leader()
        body = {"create_request": {"key": b64("gw/")}}
        r = await http.post(f"http://{c.http[n]}/v3/watch", data=json.dumps(body),
                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        try:
            assert (await read_line(r))["result"]["created"] is True
            c.procs[n].send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(r.content.read(), 10)  # the stream ends ...
        finally:
            r.close()
        last = json.loads(rest.splitlines()[-1])
        assert last["error"]["grpc_code"] in (1, 14), last  # CANCELLED or UNAVAILABLE line
        assert await asyncio.to_thread(c.procs[n].wait, 10) == 0  # ... and the node exits
