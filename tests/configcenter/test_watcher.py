"""`ConfigWatcher` (hot reload) over the in-memory client: initial load, changes applied
without restart, invalid changes refused and logged while the last good config stays, re-list
after compaction and outages, lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.configcenter import DELETE, ConfigCenter, ConfigWatcher, dataclass_parser
from raftreg.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.timeout(15)


@dataclass(frozen=True)
class RateLimit:
    rps: float = 100.0
    burst: int = 20

    def __post_init__(self) -> None:
        if self.rps <= 0:
            raise ValueError("rps must be positive")


@dataclass(frozen=True)
class Balancer:
    policy: Literal["round_robin", "least_loaded"] = "round_robin"


@dataclass(frozen=True)
class Settings:
    ratelimit: RateLimit = RateLimit()
    balancer: Balancer = Balancer()


parse = dataclass_parser(Settings)


@pytest.fixture
async def mem() -> MemoryRegistryClient:
    return MemoryRegistryClient(seed=2)


async def test_start_loads_then_changes_are_applied_in_order(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    r0 = await cc.publish("gw", {"ratelimit.rps": 10})
    seen: list[tuple[float, float | None]] = []

    def on_change(new: Settings, old: Settings | None) -> None:
        seen.append((new.ratelimit.rps, None if old is None else old.ratelimit.rps))

    async with ConfigWatcher(mem, "gw", parse, on_change) as w:
        assert w.current == Settings(RateLimit(rps=10.0))
        assert w.revision == r0 and seen == [(10.0, None)]
        r1 = await cc.publish("gw", {"ratelimit.rps": 20, "balancer.policy": "least_loaded"})
        cfg = await w.wait_for(lambda c: c.ratelimit.rps == 20, 5)
        assert cfg.balancer.policy == "least_loaded" and w.revision == r1
        r2 = await cc.publish("gw", {"ratelimit.rps": 30})
        await cc.publish("gw", {"ratelimit.rps": DELETE})  # back to the default
        await w.wait_for(lambda c: c.ratelimit.rps == 100.0, 5)
        assert seen == [(10.0, None), (20.0, 10.0), (30.0, 20.0), (100.0, 30.0)]
        await mem.put("/config/other/ratelimit.rps", "1")
        same = await cc.publish("gw", {"ratelimit.burst": 20})  # equal config: no callback
        await w.wait_revision(same, 5)
        assert len(seen) == 4 and w.revision == same and r2 < same
    assert not w.running
    await cc.publish("gw", {"ratelimit.rps": 1})
    assert w.current.ratelimit.rps == 100.0  # stopped: no longer updated


async def test_async_on_change_is_awaited_one_at_a_time(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    active = 0
    order: list[float] = []

    async def on_change(new: Settings, old: Settings | None) -> None:
        nonlocal active
        active += 1
        assert active == 1
        await asyncio.sleep(0.01)
        order.append(new.ratelimit.rps)
        active -= 1

    async with ConfigWatcher(mem, "gw", parse, on_change) as w:
        for i in range(1, 6):
            await cc.publish("gw", {"ratelimit.rps": i})
        await w.wait_for(lambda c: c.ratelimit.rps == 5, 5)
    assert order == [100.0, 1.0, 2.0, 3.0, 4.0, 5.0]


async def test_an_invalid_change_is_logged_and_the_last_good_config_stays(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "raftreg.config")
    cc = ConfigCenter(mem)
    good = await cc.publish("gw", {"ratelimit.rps": 10})
    changes: list[Settings] = []
    async with ConfigWatcher(mem, "gw", parse, lambda n, o: changes.append(n)) as w:
        bad_type = await cc.publish("gw", {"ratelimit.rps": "fast"})
        await w.wait_revision(bad_type, 5)
        assert w.current.ratelimit.rps == 10 and w.revision == good
        assert w.last_error is not None and "ratelimit.rps: expected float" in w.last_error
        bad_range = await cc.publish("gw", {"ratelimit.rps": -1})
        unknown = await cc.publish("gw", {"ratelimit.rps": 5, "ratelimit.rsp": 1})
        not_json = (await mem.put("/config/gw/balancer.policy", "{oops")).revision
        await w.wait_revision(not_json, 5)
        assert w.current.ratelimit.rps == 10 and w.revision == good
        fixed = await cc.publish("gw", {"ratelimit.rsp": DELETE, "balancer.policy": "random"})
        await w.wait_revision(fixed, 5)  # still invalid: not one of the policies
        ok = await cc.publish("gw", {"balancer.policy": DELETE})
        cfg = await w.wait_for(lambda c: c.ratelimit.rps == 5, 5)
        assert w.revision == ok and w.last_error is None and cfg.balancer.policy == "round_robin"
    assert [c.ratelimit.rps for c in changes] == [10, 5]
    lines = [r.getMessage() for r in caplog.records if r.name == "raftreg.config"]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert f"at revision {bad_type} rejected, keeping revision {good}: " in lines[0]
    assert "rps must be positive" in lines[1] and str(bad_range) in lines[1]
    assert "unknown setting 'ratelimit.rsp'" in lines[2] and str(unknown) in lines[2]
    assert "balancer.policy: value is not JSON" in lines[3]
    assert "expected one of ['round_robin', 'least_loaded']" in lines[4]


async def test_an_invalid_initial_config_fails_start(mem: MemoryRegistryClient) -> None:
    rev = await ConfigCenter(mem).publish("gw", {"ratelimit.burst": 1.5})
    w = ConfigWatcher(mem, "gw", parse)
    with pytest.raises(InvalidArgument, match=f"at revision {rev} is invalid: ratelimit.burst"):
        await w.start()
    assert mem.watch_count == 0 and not w.running
    with pytest.raises(FailedPrecondition):
        _ = w.current
    await mem.put("/config/gw/x", "not json")
    with pytest.raises(InvalidArgument, match="x: value is not JSON"):
        await ConfigWatcher(mem, "gw", dict).start()


async def test_no_settings_means_the_parser_defaults(mem: MemoryRegistryClient) -> None:
    async with ConfigWatcher(mem, "fresh", parse) as w:
        assert w.current == Settings() and w.revision == 1


async def test_a_compacted_watch_relists_and_goes_on(mem: MemoryRegistryClient) -> None:
    cc = ConfigCenter(mem)
    got: list[Mapping[str, Any]] = []
    async with ConfigWatcher(mem, "gw", dict, lambda n, o: got.append(n)) as w:
        watch = next(iter(mem._watches.values()))
        # What the server does when the watch's resume point is compacted away.
        r = await cc.publish("gw", {"a": 1})
        await w.wait_for(lambda c: c == {"a": 1}, 5)
        await cc.publish("gw", {"a": 2})
        watch._on_compacted(r + 1, r + 1)
        await w.wait_for(lambda c: c == {"a": 2}, 5)  # seen through the re-list
        await cc.publish("gw", {"b": 3})
        await w.wait_for(lambda c: c == {"a": 2, "b": 3}, 5)
        assert mem.watch_count == 1
    assert got == [{}, {"a": 1}, {"a": 2}, {"a": 2, "b": 3}]


async def test_a_failed_watch_and_an_outage_are_survived(
    mem: MemoryRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "raftreg.config")
    from raftreg.errors import Unavailable

    cc = ConfigCenter(mem)
    async with ConfigWatcher(mem, "gw", dict, retry_delay=0.01, max_retry_delay=0.05) as w:
        watch = next(iter(mem._watches.values()))
        mem.set_unavailable(True)
        watch._on_failed(Unavailable("stream broken for good"))
        async with asyncio.timeout(5):
            while "re-list failed" not in caplog.text:
                await asyncio.sleep(0.01)
        mem.set_unavailable(False)
        await cc.publish("gw", {"a": 1})
        await w.wait_for(lambda c: c == {"a": 1}, 5)
        assert "watch failed (stream broken for good)" in caplog.text


async def test_closing_the_client_ends_the_watcher(mem: MemoryRegistryClient) -> None:
    w = ConfigWatcher(mem, "gw", dict)
    await w.start()
    await mem.close()
    async with asyncio.timeout(5):
        while w.running:
            await asyncio.sleep(0.01)
    assert w.current == {}
    await w.stop()
    await w.stop()


async def test_wait_for_times_out_with_the_state(mem: MemoryRegistryClient) -> None:
    async with ConfigWatcher(mem, "gw", dict) as w:
        with pytest.raises(TimeoutError, match=r"did not match within 0\.05s"):
            await w.wait_for(lambda c: "a" in c, 0.05)
        with pytest.raises(TimeoutError):
            await w.wait_revision(100, 0.05)
        with pytest.raises(FailedPrecondition):
            await w.start()
