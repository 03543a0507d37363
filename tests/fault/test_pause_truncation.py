"""A leader paused (SIGSTOP) past an election and resumed under write load must not make any
node drop or rewrite an entry it committed.

PySyncObj 0.3.17 cut a follower's log after prevLogIdx on every overlapping append (a stale or
repeated send, a heartbeat), committed and applied entries included, and said so with a
CRITICAL "truncating already-applied log entries". raftreg's follower append (raft.py
`_Fsm._append_entries`) only cuts at a real conflict above the commit index. Here the leader is
paused three times under load, with a few raft messages dropped and all delayed (so several
appends are in flight per link and resets make the leader re-send overlapping entries);
afterwards no node log holds a CRITICAL line or a future "never retrieved", and the nodes'
raft logs on disk — read back after kill -9 with the journal's own reader — hold the same entry
at every index up to the commit index, each node all the way to what it applied. With
PySyncObj's own follower append in place of ours, this test failed 3 runs out of 3
("truncating already-applied log entries").
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.consensus.journal import WAL_NAME, scan_wal
from raftreg.errors import RegistryError
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PAUSE_S = 2.0  # > election_timeout_max (0.8 s) + leader_fallback_timeout (0.6 s)
CYCLES = 3
DROP_RATE = 0.05
DELAY_MS = 30.0  # several appends in flight per link


async def _load(client: GrpcRegistryClient, acked: dict[str, str], stop: asyncio.Event) -> None:
    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"pause/{w}/{i}"
            try:
                await client.put(key, f"v{i}")
                acked[key] = f"v{i}"
            except RegistryError:
                pass  # not acknowledged: no claim either way
            i += 1

    await asyncio.gather(*(worker(w) for w in range(8)))


async def _grow(acked: dict[str, str], by: int, timeout: float = 30.0) -> None:
    want = len(acked) + by
    deadline = time.monotonic() + timeout
    while len(acked) < want:
        assert time.monotonic() < deadline, f"writes stalled at {len(acked)}"
        await asyncio.sleep(0.02)


async def test_paused_leader_resumed_under_load_truncates_nothing_committed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    # No log compaction at this size: whole logs are compared. A few dropped raft messages make
    # the leader re-send overlapping entries after a reset, as a lost connection does.
    with ProcessCluster(root, faults=True) as c:
        c.start()
        c.wait_leader()
        c.drop_rate(DROP_RATE)
        c.delay(DELAY_MS)
        acked: dict[str, str] = {}
        stop = asyncio.Event()
        paused: list[str] = []
        async with GrpcRegistryClient(c.endpoints, timeout=2.0) as client:
            load = asyncio.create_task(_load(client, acked, stop))
            try:
                await _grow(acked, 100)
                for _ in range(CYCLES):
                    leader = await asyncio.to_thread(c.wait_leader)
                    c.pause(leader)
                    paused.append(leader)
                    await asyncio.sleep(PAUSE_S)  # the others elect a leader meanwhile
                    c.resume(leader)  # its stale appends and term meet the new leader's
                    await _grow(acked, 150)
            finally:
                stop.set()
                await load
                c.heal_network()
            got = await client.get("pause/", prefix=True)
            have = {kv.key.decode(): kv.value.decode() for kv in got.kvs}
            lost = [k for k, v in acked.items() if have.get(k) != v]
            assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        await asyncio.to_thread(c.wait_converged, 30.0)
        status = {n: c.status(n) for n in c.names}
        for n in c.names:
            c.kill(n)
        logs = {n: c.log_text(n) for n in c.names}

    for n, text in logs.items():
        bad = [line for line in text.splitlines()
               if "truncating already-applied" in line or "CRITICAL" in line
               or "never retrieved" in line]  # a proposal or barrier future nobody awaited
        assert not bad, f"{n}: {bad[:3]}"
    assert len(set(paused)) >= 1 and len(acked) >= 500

    wal = {n: scan_wal(root / "data" / n / WAL_NAME)[0] for n in status}
    by_index = {n: {e[1]: e for e in entries} for n, entries in wal.items()}
    commit = min(st.raftIndex for st in status.values() if st is not None)
    for n, st in status.items():
        assert st is not None
        idxs = by_index[n]
        assert idxs, f"{n}: empty log"
        first, last = min(idxs), max(idxs)
        assert first == 1, f"{n}: log starts at {first} (compacted? the test expects whole logs)"
        assert last >= st.raftAppliedIndex, (
            f"{n}: applied {st.raftAppliedIndex} but its log on disk ends at {last}")
    names = list(status)
    for i in range(1, commit + 1):
        entries = {n: by_index[n].get(i) for n in names}
        assert all(e is not None for e in entries.values()), f"index {i} missing: {entries}"
        assert len(set(entries.values())) == 1, f"nodes disagree at committed index {i}"
