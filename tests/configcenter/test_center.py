"""`ConfigCenter` over the in-memory client: layout, atomic publish, optimistic checks, history
(including compaction) and rollback."""

from __future__ import annotations

import asyncio

import pytest

from raftreg.client import MemoryRegistryClient, Watch
from raftreg.common.types import EventType
from raftreg.configcenter import (
    DELETE,
    BadValue,
    ConfigCenter,
    config_key,
    config_prefix,
    decode_value,
    encode_value,
    versions_in,
)
from raftreg.errors import (
    Compacted,
    DeadlineExceeded,
    FailedPrecondition,
    FutureRevision,
    InvalidArgument,
)

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def mem() -> MemoryRegistryClient:
    return MemoryRegistryClient(seed=1)


def test_layout_and_names() -> None:
    assert config_prefix("gateway") == "/config/gateway/"
    assert config_key("gateway", "ratelimit.rps") == "/config/gateway/ratelimit.rps"
    assert config_key("gateway", "routes/users.timeout") == "/config/gateway/routes/users.timeout"
    for bad_service in ("", "a/b", "-x", "a b"):
        with pytest.raises(InvalidArgument):
            config_prefix(bad_service)
    for bad_name in ("", "/a", "a/", "a//b", "a\nb"):
        with pytest.raises(InvalidArgument):
            config_key("gateway", bad_name)


def test_values_are_json_and_bad_text_is_reported_not_raised() -> None:
    assert encode_value({"a": [1, 2.5, True, None, "é"]}) == '{"a":[1,2.5,true,null,"é"]}'.encode()
    for not_json in (float("nan"), {1, 2}, object()):
        with pytest.raises(InvalidArgument):
            encode_value(not_json)
    assert decode_value(b"42") == 42
    for raw in (b"{nope", b"NaN", b"\xff", b""):
        bad = decode_value(raw)
        assert isinstance(bad, BadValue) and bad.raw == raw and bad.reason


async def test_publish_is_one_revision_with_puts_and_deletes(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    r1 = await cc.publish("gw", {"ratelimit.rps": 100, "ratelimit.burst": 20, "old": "x"})
    w = await mem.watch(config_prefix("gw"), prefix=True)
    r2 = await cc.publish("gw", {"ratelimit.rps": 50.5, "old": DELETE, "hosts": ["a", "b"]})
    assert r2 == r1 + 1
    batch = await asyncio.wait_for(w.__anext__(), 5)
    assert {e.kv.mod_revision for e in batch.events} == {r2}
    assert sorted((e.type, e.kv.key) for e in batch.events) == [
        (EventType.PUT, b"/config/gw/hosts"),
        (EventType.PUT, b"/config/gw/ratelimit.rps"),
        (EventType.DELETE, b"/config/gw/old"),
    ]
    w.cancel()
    snap = await cc.get("gw")
    assert snap.revision == r2
    assert dict(snap.values) == {"ratelimit.rps": 50.5, "ratelimit.burst": 20, "hosts": ["a", "b"]}
    assert snap.entries["ratelimit.burst"].mod_revision == r1
    assert snap.entries["ratelimit.rps"].version == 2
    assert dict((await cc.get("gw", revision=r1)).values) == {
        "ratelimit.rps": 100, "ratelimit.burst": 20, "old": "x"}
    with pytest.raises(InvalidArgument):
        await cc.publish("gw", {})
    with pytest.raises(InvalidArgument):
        await cc.publish("gw", {"ok": 1, "bad": float("inf")})
    assert (await cc.get("gw")).revision == r2  # nothing written by the refused publishes


async def test_a_value_that_is_not_json_is_reported(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    await cc.publish("gw", {"a": 1})
    await mem.put("/config/gw/b", "{broken")
    snap = await cc.get("gw")
    assert dict(snap.values) == {"a": 1}
    assert list(snap.invalid) == ["b"] and "not JSON" in snap.invalid["b"]
    assert not snap.entries["b"].valid


async def test_expect_revision_refuses_any_change_since(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    r1 = await cc.publish("gw", {"a": 1, "b": 2})
    await mem.put("/config/other/a", "1")  # another service: not a conflict
    r2 = await cc.publish("gw", {"a": 3}, expect_revision=r1)
    for stale_change in ({"c": 1}, {"a": 4}):  # a new key, a changed key
        with pytest.raises(FailedPrecondition, match="changed after revision"):
            await cc.publish("gw", stale_change, expect_revision=r1)
    r3 = await cc.publish("gw", {"b": DELETE}, expect_revision=r2)
    with pytest.raises(FailedPrecondition):  # a deleted key since r2
        await cc.publish("gw", {"x": 1}, expect_revision=r2)
    assert dict((await cc.get("gw")).values) == {"a": 3}
    with pytest.raises(FutureRevision):
        await cc.publish("gw", {"x": 1}, expect_revision=r3 + 10)
    await mem.compact(r3)
    with pytest.raises(Compacted):
        await cc.publish("gw", {"x": 1}, expect_revision=r1)


async def test_history_lists_every_version_oldest_first(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    h0 = await cc.history("gw")
    assert (h0.versions, h0.compacted, h0.oldest_revision) == ((), False, 1)
    r1 = await cc.publish("gw", {"a": 1, "b": "x"})
    await mem.put("/config/gwx/a", "9")  # a neighbour whose prefix starts the same way
    lease = await mem.lease_grant(30)
    await mem.lease_revoke(lease.id)  # no keys: no revision
    r2 = await cc.publish("gw", {"a": 2, "b": DELETE})
    await mem.put("/config/gw/c", "{broken")
    r4 = (await mem.put("unrelated", "1")).revision
    h = await cc.history("gw")
    assert h.revision == r4 and not h.compacted
    assert [v.revision for v in h] == [r1, r2, r2 + 1] and len(h) == 3
    assert dict(h[0].puts) == {"a": 1, "b": "x"} and h[0].deletes == ()
    assert dict(h[1].puts) == {"a": 2} and h[1].deletes == ("b",)
    assert isinstance(h[2].puts["c"], BadValue)
    only_b = await cc.history("gw", "b")
    assert [(v.revision, dict(v.puts), v.deletes) for v in only_b] == [
        (r1, {"b": "x"}, ()), (r2, {}, ("b",))]


async def test_history_after_compaction_says_so(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    revs = [await cc.publish("gw", {"n": i}) for i in range(5)]
    await mem.compact(revs[2])
    h = await cc.history("gw")
    assert h.compacted and h.oldest_revision == revs[2]
    assert [v.puts["n"] for v in h] == [2, 3, 4]
    await mem.compact(revs[4])
    h = await cc.history("gw")
    assert h.compacted and [v.revision for v in h] == [revs[4]]


async def test_history_is_bounded_in_time(
    mem: MemoryRegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ConfigCenter(mem).publish("gw", {"a": 1})
    real_watch = mem.watch

    async def silent_watch(*args: object, **kw: object) -> Watch:
        return await real_watch("nothing-here")  # confirmed, but never delivers anything

    monkeypatch.setattr(mem, "watch", silent_watch)
    with pytest.raises(DeadlineExceeded, match=r"not complete within 0\.2s"):
        await ConfigCenter(mem, history_timeout=0.2).history("gw")
    assert mem.watch_count == 0  # the watch was cancelled


async def test_rollback_restores_an_earlier_revision_in_one_txn(
    mem: MemoryRegistryClient,
) -> None:
    cc = ConfigCenter(mem)
    r1 = await cc.publish("gw", {"a": 1, "b": 2})
    await cc.publish("gw", {"a": 5, "b": DELETE, "c": 3})
    w = await mem.watch(config_prefix("gw"), prefix=True)
    r3 = await cc.rollback("gw", r1)
    batch = await asyncio.wait_for(w.__anext__(), 5)
    assert {e.kv.mod_revision for e in batch.events} == {r3}
    w.cancel()
    assert dict((await cc.get("gw")).values) == {"a": 1, "b": 2}
    assert await cc.rollback("gw", r1) == r3  # nothing differs: no new revision
    with pytest.raises(FutureRevision):
        await cc.rollback("gw", r3 + 5)
    await mem.compact(r3)
    with pytest.raises(Compacted):
        await cc.rollback("gw", r1)
    with pytest.raises(InvalidArgument):
        await cc.rollback("gw", 0)


def test_versions_in_groups_events_by_revision() -> None:
    from raftreg.common.types import Event, KeyValue

    def ev(t: EventType, key: bytes, rev: int, value: bytes = b"") -> Event:
        return Event(t, KeyValue(key, 1, rev, 1, value))

    got = versions_in(
        "s",
        [
            ev(EventType.PUT, b"/config/s/a", 5, b"1"),
            ev(EventType.PUT, b"/config/t/a", 5, b"1"),
            ev(EventType.DELETE, b"/config/s/b", 5),
            ev(EventType.PUT, b"/config/s/a", 6, b'"x"'),
        ],
    )
    assert [(v.revision, dict(v.puts), v.deletes) for v in got] == [
        (5, {"a": 1}, ("b",)), (6, {"a": "x"}, ())]
