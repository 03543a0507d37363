"""The dashboard's JSON views over the in-memory client (the real store, no processes)."""

from __future__ import annotations

import pytest

from raftreg.client.memory import MemoryRegistryClient
from raftreg.dashboard import views
from raftreg.discovery.instance import Instance, encode_instance
from raftreg.errors import InvalidArgument


async def test_services_view_lists_instances_with_lease_ttl_and_malformed_ones() -> None:
    async with MemoryRegistryClient(seed=1) as c:
        lease = await c.lease_grant(30)
        a = Instance("orders", "", "10.0.0.1:80", weight=3, zone="z1", version="v2",
                     metadata={"canary": "yes"}, registered_at=1_700_000_000.0)
        await c.put(a.key, encode_instance(a), lease=lease.id)
        await c.put("/services/user", "192.168.1.10:50051")  # the document's bare address
        await c.put("/services/orders/bad", "{")
        doc = await views.services_view(c)
    by_service = {i["service"]: i for i in doc["instances"]}
    orders = by_service["orders"]
    assert (orders["id"], orders["addr"], orders["weight"], orders["zone"], orders["version"],
            orders["metadata"]) == ("10.0.0.1:80", "10.0.0.1:80", 3, "z1", "v2",
                                    {"canary": "yes"})
    assert orders["lease"] == f"{lease.id:x}" and orders["granted_ttl"] == 30
    assert 0 < orders["ttl"] <= 30 and orders["registered_at"] == 1_700_000_000.0
    assert by_service["user"]["addr"] == "192.168.1.10:50051"
    assert by_service["user"]["ttl"] is None and by_service["user"]["lease"] == ""
    assert [m["key"] for m in doc["malformed"]] == ["/services/orders/bad"]


async def test_keys_view_bounds_and_text() -> None:
    async with MemoryRegistryClient(seed=1) as c:
        for i in range(5):
            await c.put(f"k/{i}", f"v{i}")
        await c.put("k/bin", b"\xff\x00ok")
        await c.put("k/long", "x" * (views.MAX_VALUE_CHARS + 10))
        doc = await views.keys_view(c, "k/", 3)
        assert [kv["key"] for kv in doc["kvs"]] == ["k/0", "k/1", "k/2"]
        assert doc["more"] and doc["count"] == 7
        every = await views.keys_view(c, "", views.MAX_KEYS)
        by_key = {kv["key"]: kv for kv in every["kvs"]}
        assert by_key["k/bin"]["value"] == "\\xff\x00ok"
        assert by_key["k/long"]["truncated"]
        assert len(by_key["k/long"]["value"]) == views.MAX_VALUE_CHARS
        for bad in (0, views.MAX_KEYS + 1):
            with pytest.raises(InvalidArgument):
                await views.keys_view(c, "", bad)


async def test_config_views_group_by_service_and_keep_history() -> None:
    async with MemoryRegistryClient(seed=1) as c:
        await c.put("/config/orders/db.pool", "10")
        await c.put("/config/orders/db.pool", "12")
        await c.put("/config/orders/flag", "not json")
        await c.put("/config/bad name/x", "1")
        doc = await views.config_view(c)
        hist = await views.config_history_view(c, "orders")
        with pytest.raises(InvalidArgument):
            await views.config_history_view(c, "")
    services = {s["service"]: s for s in doc["services"]}
    assert {s["name"]: s["value"] for s in services["orders"]["settings"]} == {
        "db.pool": "12", "flag": "not json"}
    assert services["bad name"]["error"] and services["bad name"]["settings"] == []
    assert [v["puts"] for v in hist["versions"]] == [
        {"flag": "not json"}, {"db.pool": "12"}, {"db.pool": "10"}]
