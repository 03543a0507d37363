"""Live configuration of the gateway through the config center, with real processes: settings
written by the real CLI (`python -m raftreg.cli config set`) change the running gateway's rate
limit, balancing policy and breaker thresholds without a restart; invalid settings are refused
with a log line while the last good ones stay in force.

Timing: a test waits until the gateway reports the new revision in force (`/stats`), and
measures from that moment; the lag between the CLI returning and the gateway applying the
change (raft commit, watch, reload: well under a second on a quiet machine) is printed and only
bounded generously (`APPLY_LAG_BOUND_S`). Rate-limit bounds follow from the token bucket's
contract over a measured interval, never from an assumed request rate.

One module-wide set of processes: user instances l1 (weight 1) and l2 (weight 3) of service
`user-live`, gateway g-live (config service `gateway-live`). Each test sets the settings it
relies on first and deletes them again at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
import pytest

from raftreg.testing import ProcessCluster
from services.testing import (
    REPO_ROOT,
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

pytestmark = pytest.mark.slow  # every test runs against the module's processes

CONFIG_SERVICE = "gateway-live"
WEIGHTS = {"l1": 1, "l2": 3}
# The CLI returned -> the gateway reports the revision in force. Typically well under 1 s; the
# bound only catches a change that was not applied live at all.
APPLY_LAG_BOUND_S = 5.0


@dataclass(frozen=True)
class Live:
    group: ServiceGroup
    users: dict[str, ServiceProc]
    gateway: ServiceProc
    endpoints: str  # the registry, as the CLI's --endpoints takes it

    @property
    def gw(self) -> str:
        return self.gateway.http_url


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, registry_cluster: ProcessCluster, registry_url: str
) -> Iterator[Live]:
    with ServiceGroup(tmp_path_factory.mktemp("live"), registry_url) as g:
        specs: list[tuple[str, str, list[str]]] = [
            ("user", u, ["--service", "user-live", "--weight", str(w)]) for u, w in WEIGHTS.items()
        ]
        specs.append(("gateway", "g-live", [
            "--service", CONFIG_SERVICE, "--user-service", "user-live",
            "--chat-service", "chat-live", "--policy", "weighted_round_robin",
            *GENEROUS_DEADLINE,
        ]))
        procs = {p.id: p for p in g.start_many(specs)}
        yield Live(g, {u: procs[u] for u in WEIGHTS}, procs["g-live"],
                   ",".join(registry_cluster.endpoints))


async def _cli(live: Live, *args: str) -> str:
    """Run `python -m raftreg.cli --endpoints <registry> <args>`; its stdout (exit 0 asserted)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftreg.cli", "--endpoints", live.endpoints, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, (args, err.decode())
    return out.decode()


async def config_set(live: Live, *settings: str, delete: tuple[str, ...] = ()) -> int:
    """`raftreg config set gateway-live NAME=VALUE... [--delete NAME]...`; the new revision."""
    args = [a for name in delete for a in ("--delete", name)]
    out = await _cli(live, "config", "set", CONFIG_SERVICE, *settings, *args)
    m = re.fullmatch(r"published revision (\d+)\s*", out)
    assert m is not None, out
    return int(m.group(1))


async def _stats(http: aiohttp.ClientSession, live: Live) -> dict[str, Any]:
    status, doc = await get_json(http, f"{live.gw}/stats")
    assert status == 200, doc
    return dict(doc)


async def _in_force(http: aiohttp.ClientSession, live: Live, revision: int) -> dict[str, Any]:
    """Stats once the config of `revision` (or later) is in force."""
    return await wait_stats(http, live.gw, lambda s: s["config"]["revision"] >= revision,
                            timeout=10)


async def _evaluated(http: aiohttp.ClientSession, live: Live, revision: int) -> dict[str, Any]:
    """Stats once the gateway has judged `revision` (accepted or not)."""
    return await wait_stats(http, live.gw, lambda s: s["config"]["seen_revision"] >= revision,
                            timeout=10)


class Answer(NamedTuple):
    sent: float  # time.monotonic() when the request was created (before it went out)
    answered: float  # ... when its answer (or failure) was read
    status: int  # HTTP status, 0 for no HTTP answer


@dataclass
class PacedLoad:
    """GET `url` at a fixed offered rate (a request every 1/rate s, whether or not earlier
    ones answered), recording an `Answer` for every request, and the headers and body of the
    first 429."""

    http: aiohttp.ClientSession
    url: str
    rate: float
    answers: list[Answer] = field(default_factory=list)
    first_429: tuple[dict[str, str], Any] | None = None
    _task: asyncio.Task[None] | None = None
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    async def _one(self, sent: float) -> None:
        try:
            async with self.http.get(self.url) as r:
                body = await r.read()
                if r.status == 429 and self.first_429 is None:
                    self.first_429 = (dict(r.headers), json.loads(body))
                self.answers.append(Answer(sent, time.monotonic(), r.status))
        except (aiohttp.ClientError, TimeoutError):
            self.answers.append(Answer(sent, time.monotonic(), 0))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = time.monotonic()
        while True:
            t = loop.create_task(self._one(time.monotonic()))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)
            next_at += 1 / self.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def __aenter__(self) -> PacedLoad:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._inflight, return_exceptions=True)

    async def wait_for(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `done()` holds (checked every 20 ms); `TimeoutError` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout}s: {len(self.answers)} answers")
            if self._task is not None and self._task.done():
                raise RuntimeError("the load generator died")
            await asyncio.sleep(0.02)

    def sent_since(self, start: float, answered_by: float = float("inf")) -> list[Answer]:
        """The answers to requests sent at or after `start` and answered by `answered_by`."""
        return [a for a in self.answers if a.sent >= start and a.answered <= answered_by]


async def test_rate_limit_set_with_the_cli_applies_live(
    live: Live, http: aiohttp.ClientSession
) -> None:
    rev = await config_set(live, "ratelimit.rps=1000")
    await _in_force(http, live, rev)
    limited_before = (await _stats(http, live))["rate_limited"].get("/user", 0)
    rps, burst = 20, 5
    try:
        async with PacedLoad(http, f"{live.gw}/user?id=1", rate=100) as load:
            await load.wait_for(lambda: len(load.answers) >= 60, 30, "60 answers at 1000/s")
            t_cli = time.monotonic()
            rev = await config_set(live, f"ratelimit.rps={rps}", f"ratelimit.burst={burst}")
            t_set = time.monotonic()
            await _in_force(http, live, rev)  # polled while the load runs
            t_force = time.monotonic()

            # Every request sent from t_force on reached the gateway after it had answered
            # that stats request, i.e. with the new limit in force, and before its answer was
            # read: those answered by t_end arrived within [t_force, t_end], where the bucket
            # (at most `burst` tokens at t_force) can admit no more than rps*(t_end-t_force)
            # + burst. Measure until they are at least twice that many, and at least 60.
            t_end = 0.0

            def enough() -> bool:
                nonlocal t_end
                now = time.monotonic()
                admissible = rps * (now - t_force) + burst
                if len(load.sent_since(t_force, now)) >= max(60, 2 * admissible):
                    t_end = now
                    return True
                return False

            await load.wait_for(enough, 30, "a measurement window")
        stats = await _stats(http, live)
        assert stats["config"]["revision"] == rev
        assert stats["config"]["settings"]["ratelimit"] == {
            "rps": rps, "burst": burst, "routes": {}}
        lag = t_force - t_set
        print(f"rate limit: CLI returned -> in force in {lag:.3f} s "
              f"(CLI took {t_set - t_cli:.3f} s)")
        assert lag < APPLY_LAG_BOUND_S, lag

        before = [a.status for a in load.answers if a.answered < t_cli]
        assert len(before) >= 60 and set(before) == {200}, before  # ~100/s < 1000/s
        window = [a.status for a in load.sent_since(t_force, t_end)]
        admitted = window.count(200)
        bound = rps * (t_end - t_force) + burst
        figures = (admitted, len(window), round(t_end - t_force, 3))
        print(f"rate limit: {admitted} of {len(window)} admitted in {t_end - t_force:.3f} s "
              f"(bound {bound:.1f})")
        assert set(window) <= {200, 429}, window
        assert len(window) >= max(60, 2 * bound), figures
        assert admitted <= bound + 1, figures  # +1: float rounding at the edges
        assert window.count(429) >= len(window) / 2, figures
        # every 429 is counted in /stats (every request got its HTTP answer)
        assert {a.status for a in load.answers} <= {200, 429}, load.answers
        counted = stats["rate_limited"]["/user"] - limited_before
        assert counted == sum(1 for a in load.answers if a.status == 429), counted

        # a 429 carries Retry-After and says when to come back
        assert load.first_429 is not None
        headers, doc = load.first_429
        assert int(headers["Retry-After"]) >= 1, headers
        assert doc["code"] == "RESOURCE_EXHAUSTED" and doc["retry_after_ms"] > 0, doc

        # a limit per route: /chat limited to 0.1/s (burst 1: one token, the next in 10 s),
        # /user no longer limited
        rev = await config_set(live, 'ratelimit.routes={"/chat": 0.1}',
                               delete=("ratelimit.rps", "ratelimit.burst"))
        await _in_force(http, live, rev)
        chats = [await post_json(http, f"{live.gw}/chat", {"content": "hi"}) for _ in range(5)]
        # the first one passes the limit (and finds no chat instance), the rest are refused
        assert [s for s, _ in chats] == [503, 429, 429, 429, 429], chats
        t = await send_user_traffic(http, live.gw, 40, concurrency=8)
        assert t.failures == 0, t
    finally:
        await config_set(live, delete=("ratelimit.rps", "ratelimit.burst", "ratelimit.routes"))


async def test_invalid_setting_is_refused_and_the_last_good_settings_stay(
    live: Live, http: aiohttp.ClientSession
) -> None:
    async def burst_of_requests() -> tuple[int, int, float]:
        t0 = time.monotonic()
        t = await send_user_traffic(http, live.gw, 60, concurrency=6)
        assert set(t.failed) <= {429}, t
        return t.ok, t.failed[429], time.monotonic() - t0

    # A limit of 2/s: the 60 requests of a burst get at most 2/s x its duration + 2 through,
    # so even a burst slowed down to 13 s by a busy machine still has >= 30 refused.
    rps, burst = 2, 2
    good = await config_set(live, f"ratelimit.rps={rps}", f"ratelimit.burst={burst}")
    await _in_force(http, live, good)
    try:
        for bad, reason in (("ratelimit.rps=fast", "expected float"),
                            ("ratelimit.rps=-1", "must be a positive number"),
                            ("ratelimit.rpz=5", "unknown setting 'ratelimit.rpz'")):
            rev = await config_set(live, bad)
            stats = await _evaluated(http, live, rev)
            cfg = stats["config"]
            assert cfg["revision"] == good and reason in cfg["last_error"], cfg
            assert cfg["settings"]["ratelimit"]["rps"] == rps, cfg
            line = (f"config of {CONFIG_SERVICE} at revision {rev} rejected, "
                    f"keeping revision {good}: ")
            assert any(line in ln and reason in ln
                       for ln in live.group.log_text("g-live").splitlines()), line
            # the limit of revision `good` still holds: about 2/s get through
            ok, refused, seconds = await burst_of_requests()
            assert ok <= rps * seconds + burst + 1 and refused >= 30, (ok, refused, seconds)

        # repairing the config (the bad names removed: no limit) applies again
        rev = await config_set(live, delete=("ratelimit.rps", "ratelimit.burst",
                                             "ratelimit.rpz"))
        stats = await _in_force(http, live, rev)
        assert stats["config"]["last_error"] is None, stats["config"]
        ok, refused, _ = await burst_of_requests()
        assert (ok, refused) == (60, 0)
    finally:
        await config_set(live, delete=("ratelimit.rps", "ratelimit.burst", "ratelimit.rpz"))


async def test_policy_and_breaker_thresholds_change_live(
    live: Live, http: aiohttp.ClientSession
) -> None:
    l1 = live.users["l1"]
    rev = await config_set(
        live, "balancer.policy=weighted_round_robin", "breaker.window_s=10",
        "breaker.min_calls=1000", "breaker.open_for_s=1", "breaker.half_open_probes=1",
        "outlier.max_ejected_fraction=0", "retry.base_ms=1",
    )
    await _in_force(http, live, rev)
    await wait_stats(http, live.gw, lambda s: instance_ids(s) == set(WEIGHTS) and all(
        b["state"] == "closed" for b in s["breakers"].values()))
    try:
        # weights 1:3 -> 1:3 spread
        t = await send_user_traffic(http, live.gw, 80, concurrency=4)
        assert t.failures == 0 and abs(t.served["l1"] - 20) <= 2, t

        rev = await config_set(live, "balancer.policy=round_robin")
        t_set = time.monotonic()
        stats = await _in_force(http, live, rev)
        lag = time.monotonic() - t_set
        print(f"policy: CLI returned -> in force in {lag:.3f} s")
        assert stats["policy"] == "round_robin" and lag < APPLY_LAG_BOUND_S, lag
        t = await send_user_traffic(http, live.gw, 80, concurrency=4)
        assert t.failures == 0 and abs(t.served["l1"] - 40) <= 2, t

        # l1 fails every call; with min_calls=1000 its breaker never opens: it keeps getting
        # (and failing) its share, and the retries hide that from the clients
        status, _ = await post_json(http, f"{l1.http_url}/admin/fail",
                                    {"rate": 1.0, "code": "UNAVAILABLE"})
        assert status == 200
        t = await send_user_traffic(http, live.gw, 40, concurrency=4)
        calls = (await get_json(http, f"{l1.http_url}/admin/fail"))[1]["calls"]
        stats = await _stats(http, live)
        assert t.failures == 0 and t.served == {"l2": 40}, t
        assert calls >= 15 and stats["breakers"]["l1"]["state"] == "closed", (calls, stats)

        # the same failures trip the breaker once min_calls is lowered live
        rev = await config_set(live, "breaker.min_calls=4")
        await _in_force(http, live, rev)
        total = Traffic()
        deadline = time.monotonic() + 30
        while (await _stats(http, live))["breakers"]["l1"]["state"] != "open":
            assert time.monotonic() < deadline
            t = await send_user_traffic(http, live.gw, 4, concurrency=2)
            total.served.update(t.served)
            total.failed.update(t.failed)
        before, t0 = (await get_json(http, f"{l1.http_url}/admin/fail"))[1]["calls"], \
            time.monotonic()
        t = await send_user_traffic(http, live.gw, 40, concurrency=4)
        probes = (await get_json(http, f"{l1.http_url}/admin/fail"))[1]["calls"] - before
        # open for 1 s, then one probe at a time: about one call per second (the bound allows
        # twice that), far below the ~20 calls round robin gave it before
        assert probes <= 2 * (time.monotonic() - t0) + 1, probes
        assert t.failures == 0 and total.failures == 0, (t, total)
    finally:
        await post_json(http, f"{l1.http_url}/admin/fail", {"rate": 0})
        await config_set(live, delete=(
            "balancer.policy", "breaker.window_s", "breaker.min_calls", "breaker.open_for_s",
            "breaker.half_open_probes", "outlier.max_ejected_fraction", "retry.base_ms",
        ))
