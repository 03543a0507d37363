"""The config center (`raftreg.configcenter`): one contract for both backends (see conftest).
Each test works on its own service, named after its key prefix."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from raftreg.client import RegistryClient
from raftreg.common.types import EventType
from raftreg.configcenter import (
    DELETE,
    BadValue,
    ConfigCenter,
    ConfigWatcher,
    config_prefix,
    dataclass_parser,
)
from raftreg.errors import Compacted, FailedPrecondition, FutureRevision
from tests.contract.conftest import WAIT

pytestmark = pytest.mark.slow


@pytest.fixture
def service(prefix: str) -> str:
    """A service name no other test uses ("contract-<test>-<n>")."""
    return prefix.strip("/").replace("/", "-")


@dataclass(frozen=True)
class RateLimit:
    rps: float = 100.0
    burst: int = 20


@dataclass(frozen=True)
class Settings:
    ratelimit: RateLimit = RateLimit()
    timeout_ms: int = 500


async def test_publish_writes_every_change_in_one_revision(
    registry: RegistryClient, service: str
) -> None:
    cc = ConfigCenter(registry)
    r1 = await cc.publish(service, {"a": 1, "b": "x", "c": [1, 2]})
    # From after r1 (a watch from "now" starts at the serving member's revision, which may
    # not include r1 yet).
    w = await registry.watch(config_prefix(service), prefix=True, start_revision=r1 + 1)
    r2 = await cc.publish(service, {"a": 2, "b": DELETE, "d": {"k": True}})
    batch = await asyncio.wait_for(w.__anext__(), 10)
    w.cancel()
    assert {e.kv.mod_revision for e in batch.events} == {r2}
    assert sorted((e.type.name, e.kv.key.decode().rsplit("/", 1)[1]) for e in batch.events) == [
        ("DELETE", "b"), ("PUT", "a"), ("PUT", "d")]
    snap = await cc.get(service)
    assert snap.revision >= r2
    assert dict(snap.values) == {"a": 2, "c": [1, 2], "d": {"k": True}}
    assert snap.entries["c"].mod_revision == r1 and snap.entries["a"].version == 2
    assert dict((await cc.get(service, revision=r1)).values) == {"a": 1, "b": "x", "c": [1, 2]}


async def test_expect_revision_refuses_a_publish_after_any_change(
    registry: RegistryClient, service: str
) -> None:
    cc = ConfigCenter(registry)
    r1 = await cc.publish(service, {"a": 1, "b": 2})
    r2 = await cc.publish(service, {"a": 2}, expect_revision=r1)
    with pytest.raises(FailedPrecondition):
        await cc.publish(service, {"c": 1}, expect_revision=r1)
    await cc.publish(service, {"b": DELETE}, expect_revision=r2)
    with pytest.raises(FailedPrecondition):  # b was deleted after r2
        await cc.publish(service, {"c": 1}, expect_revision=r2)
    assert dict((await cc.get(service)).values) == {"a": 2}


async def test_history_lists_versions_and_reports_compaction(
    registry: RegistryClient, service: str
) -> None:
    cc = ConfigCenter(registry)
    r1 = await cc.publish(service, {"a": 1, "b": "x"})
    await registry.put(f"/config/{service}x/a", "1")  # a neighbour service's key
    r2 = await cc.publish(service, {"a": 2, "b": DELETE})
    r3 = (await registry.put(config_prefix(service) + "c", "{broken")).revision
    h = await cc.history(service)
    assert [v.revision for v in h] == [r1, r2, r3]
    assert dict(h[0].puts) == {"a": 1, "b": "x"}
    assert (dict(h[1].puts), h[1].deletes) == ({"a": 2}, ("b",))
    assert isinstance(h[2].puts["c"], BadValue)
    assert [v.revision for v in await cc.history(service, "b")] == [r1, r2]

    await registry.compact(r2)
    h = await cc.history(service)
    assert h.compacted and h.oldest_revision == r2
    assert [v.revision for v in h] == [r2, r3]


async def test_rollback_restores_a_revision_and_refuses_compacted_or_future_ones(
    registry: RegistryClient, service: str
) -> None:
    cc = ConfigCenter(registry)
    r1 = await cc.publish(service, {"a": 1, "b": 2})
    r2 = await cc.publish(service, {"a": 5, "b": DELETE, "c": 3})
    w = await registry.watch(config_prefix(service), prefix=True, start_revision=r2 + 1)
    r3 = await cc.rollback(service, r1)
    batch = await asyncio.wait_for(w.__anext__(), 10)
    w.cancel()
    assert {e.kv.mod_revision for e in batch.events} == {r3}
    assert sorted((e.type, e.kv.key.decode().rsplit("/", 1)[1]) for e in batch.events) == [
        (EventType.PUT, "a"), (EventType.PUT, "b"), (EventType.DELETE, "c")]
    assert dict((await cc.get(service)).values) == {"a": 1, "b": 2}
    with pytest.raises(FutureRevision):
        await cc.rollback(service, r3 + 1000)
    await registry.compact(r3)
    with pytest.raises(Compacted):
        await cc.rollback(service, r1)


async def test_a_watcher_applies_changes_and_refuses_invalid_ones(
    registry: RegistryClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "raftreg.config")
    cc = ConfigCenter(registry)
    await cc.publish(service, {"ratelimit.rps": 10})
    changes: list[Settings] = []
    async with ConfigWatcher(
        registry, service, dataclass_parser(Settings), lambda new, old: changes.append(new)
    ) as w:
        assert w.current == Settings(RateLimit(rps=10.0))
        r = await cc.publish(service, {"ratelimit.rps": 20, "timeout_ms": 250})
        await w.wait_for(lambda c: c.ratelimit.rps == 20 and c.timeout_ms == 250, WAIT)
        assert w.revision == r

        bad = await cc.publish(service, {"timeout_ms": "soon"})
        await w.wait_revision(bad, WAIT)
        assert w.current.timeout_ms == 250 and w.revision == r
        assert w.last_error is not None and "timeout_ms: expected int" in w.last_error

        good = await cc.publish(service, {"timeout_ms": 300})
        await w.wait_for(lambda c: c.timeout_ms == 300, WAIT)
        assert w.revision == good
    assert [c.timeout_ms for c in changes] == [500, 250, 300]
    rejected = [r.getMessage() for r in caplog.records if r.name == "raftreg.config"]
    assert len(rejected) == 1 and f"at revision {bad} rejected" in rejected[0]
