"""The etcd adapter across member and leader failures on a real three-node etcd, and the CLI
run unchanged against etcd. Every wait is on an event or a state, with an explicit bound derived
from the configured timeouts (at least twice what they imply); no sleep stands in for an event.
The fixture SIGKILLs every etcd it started."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from raftreg.cli import run
from raftreg.client import connect
from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.types import KeyValue
from raftreg.errors import OutcomeUnknown, RegistryError
from raftreg.testing.etcd import EtcdCluster
from raftreg.testing.tcpproxy import Http2Streams, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LEADER_BOUND = 20.0  # a new etcd leader: election timeout 1 s, x 20 for a loaded machine


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd") as c:
        c.start()
        c.wait_leader()
        yield c


async def wait_until(
    cond: Callable[[], bool],
    bound: float,
    what: str,
    *,
    tasks: Sequence[asyncio.Task[None]] = (),
) -> None:
    """Return once `cond()` holds; fail after `bound` seconds, or at once if one of `tasks`
    ended (with its error, if it failed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not cond():
        for t in tasks:
            if t.done():
                t.result()
                raise AssertionError(f"a task ended while waiting for: {what}")
        if loop.time() >= deadline:
            raise AssertionError(f"not within {bound:.1f}s: {what}")
        await asyncio.sleep(0.02)


async def wait_for_value(client: EtcdRegistryClient, key: str, *, bound: float) -> KeyValue:
    """The key's kv once it exists; fails if it does not within `bound` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not (kvs := (await client.get(key)).kvs):
        assert loop.time() < deadline, f"{key} did not appear within {bound}s"
        await asyncio.sleep(0.02)
    return kvs[0]


async def test_reads_and_writes_carry_on_across_a_leader_kill(etcd: EtcdCluster) -> None:
    async with EtcdRegistryClient(etcd.endpoints, timeout=2.0) as client:
        leader = await asyncio.to_thread(etcd.wait_leader)
        await client.put("fo/k", "0")
        acked: list[int] = []
        unknown = 0
        reads = 0
        stop = asyncio.Event()

        async def write() -> None:
            nonlocal unknown
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await client.put("fo/k", str(i))
                    acked.append(i)
                except OutcomeUnknown:
                    unknown += 1
                await asyncio.sleep(0.01)  # pacing, not a wait

        async def read() -> None:
            nonlocal reads
            while not stop.is_set():
                await client.get("fo/k")  # linearizable: must not fail across the failover
                reads += 1
                await asyncio.sleep(0.01)

        n = 5  # calls of each kind, before the kill and after the new leader
        bound = 2 * n * client.retry_budget  # each call ends within its budget; x 2
        tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
        try:
            await wait_until(lambda: len(acked) >= n and reads >= n, bound,
                             f"{n} writes acked and {n} reads before the kill", tasks=tasks)
            await asyncio.to_thread(etcd.kill, leader)
            new = await asyncio.to_thread(etcd.wait_leader, LEADER_BOUND, exclude=leader)
            acked_then, reads_then = len(acked), reads
            await wait_until(
                lambda: len(acked) >= acked_then + n and reads >= reads_then + n, bound,
                f"{n} more writes acked and {n} more reads under the new leader {new}",
                tasks=tasks,
            )
        finally:
            stop.set()
            # any error other than OutcomeUnknown fails the test
            await asyncio.wait_for(asyncio.gather(*tasks), 2 * client.retry_budget)
        assert new != leader
        (kv,) = (await client.get("fo/k")).kvs
        assert int(kv.value) >= acked[-1]
        etcd.start(leader)


async def test_a_write_with_an_ambiguous_failure_is_outcome_unknown_not_retried(
    etcd: EtcdCluster,
) -> None:
    # The client reaches etcd only through a proxy that, once armed, passes requests on and
    # withholds every answer: the put reaches etcd and is applied, its answer never comes back.
    # The adapter must say OutcomeUnknown after that one attempt: a retry could apply it twice.
    attempt, budget = 2.0, 10.0  # a retry would cost a second full attempt: >= 2 x attempt
    streams = Http2Streams()
    with TcpProxy(etcd.endpoints[0], tap=streams) as proxy:
        async with (
            EtcdRegistryClient([proxy.address], timeout=attempt, retry_budget=budget) as c,
            EtcdRegistryClient(etcd.endpoints, timeout=2.0) as direct,
        ):
            assert (await c.get("amb/k")).count == 0  # the connection is up (HTTP/2 settled)
            calls_before = streams.opened
            await asyncio.to_thread(proxy.swallow_replies)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(OutcomeUnknown):
                await c.put("amb/k", "v1")
            elapsed = loop.time() - start
            assert streams.opened - calls_before == 1, "the put was sent more than once"
            assert proxy.connections == 1
            # one attempt's deadline, not the retry budget (a retry would double it)
            assert attempt * 0.9 <= elapsed < 2 * attempt, elapsed
            # ...and the outcome really was unknown: etcd applied the put, exactly once
            kv = await wait_for_value(direct, "amb/k", bound=2 * attempt)
            assert (kv.value, kv.version) == (b"v1", 1)
            # the withheld answers arrive once released, and the connection still works
            await asyncio.to_thread(proxy.forward_replies)
            assert (await c.get("amb/k")).kvs[0].value == b"v1"


async def test_a_watch_resumes_without_gap_or_duplicate_when_its_member_dies(
    etcd: EtcdCluster,
) -> None:
    async with (
        EtcdRegistryClient(etcd.endpoints, timeout=2.0) as watcher,
        EtcdRegistryClient(etcd.endpoints, timeout=2.0) as writer,
    ):
        w = await watcher.watch("wr/", prefix=True)
        victim = next(n for n in etcd.names if etcd.client[n] == watcher.watch_endpoint)
        revs = [(await writer.put(f"wr/{i}", "x")).revision for i in range(20)]
        await asyncio.to_thread(etcd.kill, victim)
        await asyncio.to_thread(etcd.wait_leader, LEADER_BOUND, exclude=victim)
        tries = 5  # each put ends within its retry budget; OutcomeUnknown only near failover
        for i in range(20, 40):
            for _ in range(tries):
                try:
                    revs.append((await writer.put(f"wr/{i}", "x")).revision)
                    break
                except OutcomeUnknown:
                    pass  # retried as a new write; the check only counts acked ones
            else:
                raise AssertionError(f"wr/{i}: OutcomeUnknown {tries} times in a row")
        got: list[int] = []
        while not set(revs) <= set(got):
            b = await asyncio.wait_for(w.__anext__(), 15)
            got.extend(e.kv.mod_revision for e in b.events)
        assert got == sorted(set(got)), "duplicate or out of order"
        assert watcher.watch_endpoint != etcd.client[victim]
        w.cancel()
        etcd.start(victim)


async def test_the_keeper_keeps_a_lease_alive_across_a_leader_kill(etcd: EtcdCluster) -> None:
    # The keeper renews every TTL/3 and declares the lease lost when no renewal is acknowledged
    # within the TTL, so the failover (election + reconnect) must fit in 2/3 of it: with 6 s
    # that is 4 s, four election timeouts, which a busy machine needs.
    ttl = 6
    election = etcd.election_ms / 1000
    # etcd's new leader takes over every lease with TTL + election timeout to live: without
    # renewals from the keeper the lease is gone that long after the new leader's first entry.
    unrenewed = ttl + election
    loop = asyncio.get_running_loop()
    async with EtcdRegistryClient(etcd.endpoints, timeout=2.0) as client:
        leader = await asyncio.to_thread(etcd.wait_leader)
        lost: list[int] = []
        renewed_at: list[float] = []
        keeper = client.keepalive_manager()
        lid = await keeper.grant_and_keep(
            ttl, lost.append, on_renew=lambda _id, _ttl: renewed_at.append(loop.time())
        )
        await client.put("ka/k", "v", lease=lid)
        await asyncio.to_thread(etcd.kill, leader)
        new = await asyncio.to_thread(etcd.wait_leader, LEADER_BOUND, exclude=leader)
        # A linearizable read returns only once the new leader committed its first entry, and
        # etcd's lessor takes the leases over when that entry is applied (in practice, before
        # the read returns; the margin below covers the difference and the 0.5 s between
        # etcd's expiry checks).
        assert (await client.get("ka/k")).count == 1
        taken_over = loop.time()

        def renewals() -> int:
            return sum(t > taken_over for t in renewed_at)

        # The keeper renews on the new leader: two acknowledgements after the takeover (at
        # most one renewal is in flight, so the second was sent after the takeover).
        await wait_until(
            lambda: renewals() >= 2 or bool(lost), 2 * unrenewed,
            f"two renewals acknowledged under the new leader {new} (keeper: "
            f"{keeper.streams_opened} streams opened, endpoint {keeper.endpoint})",
        )
        assert lost == [], "the keeper reported the lease lost"
        # Past the time an unrenewed lease would have expired on the new leader, the lease is
        # alive (the server counts it down from a renewal) and its key is still there.
        end = taken_over + unrenewed + 1.0
        while loop.time() < end:
            left = (await client.lease_time_to_live(lid)).ttl
            assert left >= 1, f"the lease's TTL fell to {left} under the new leader"
            await asyncio.sleep(0.1)  # polling interval
        assert lost == []
        assert (await client.get("ka/k")).count == 1
        etcd.start(leader)


def test_the_cli_runs_unchanged_against_etcd(
    etcd: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cli(*args: str) -> str:
        out = io.StringIO()
        assert run(list(args), stdout=out, stderr=out) == 0, out.getvalue()
        return out.getvalue()

    assert cli("--endpoints", etcd.url, "put", "cli/k", "v1") == "OK\n"
    assert cli("--endpoints", etcd.url, "get", "cli/k") == "cli/k\nv1\n"
    members = cli("--endpoints", etcd.url, "member", "list")
    assert all(n in members for n in etcd.names)
    assert "3.5.1" in cli("--endpoints", etcd.url, "endpoint", "status", "-w", "table")
    # the same through the [registry] table, and through the environment
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'[registry]\nbackend = "etcd"\nendpoints = {etcd.endpoints!r}\n'
                   .replace("'", '"'))
    assert cli("--config", str(cfg), "get", "cli/k", "--print-value-only") == "v1\n"
    monkeypatch.setenv("RAFTREG_BACKEND", "etcd")
    assert cli("--endpoints", ",".join(etcd.endpoints), "endpoint", "health").count(
        "is healthy") == 3


async def test_connect_reaches_etcd_through_the_environment(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAFTREG_BACKEND", "etcd")
    monkeypatch.setenv("RAFTREG_ENDPOINTS", ",".join(etcd.endpoints))
    async with connect(config_path=tmp_path / "none.toml") as c:
        assert isinstance(c, EtcdRegistryClient)
        await c.put("env/k", "v")
        assert (await c.get("env/k")).kvs[0].value == b"v"


async def test_errors_are_raftreg_errors_when_no_member_answers(tmp_path: Path) -> None:
    async with EtcdRegistryClient(["127.0.0.1:1"], timeout=0.3, connect_timeout=0.2) as c:
        with pytest.raises(RegistryError):
            await c.get("x")
