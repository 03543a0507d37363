"""Raft dumps are written off the tick thread (dump.py `DumpWriter`): the writer's outcomes,
and three real RaftNodes that keep their leader and go on committing while every member's
dump takes longer than an election timeout to encode."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pysyncobj.config import SERIALIZER_STATE

from raftreg.config import new_secret
from raftreg.consensus.dump import DumpWriter, _blocks, pack_dump, unpack_dump
from raftreg.consensus.raft import RaftNode, RaftSettings
from raftreg.testing.ports import free_ports

pytestmark = pytest.mark.timeout(120)

ENTRIES = ([b"\x01", 9, 2], [b"\x01", 8, 2])


def _writer(tmp_path: Path) -> DumpWriter:
    return DumpWriter(tmp_path / "raft.dump", lambda fd, what: None)


def _wait_written(w: DumpWriter, timeout: float = 10.0) -> int:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        state = w.check()
        if state != SERIALIZER_STATE.SERIALIZING:
            return state
        done.wait(0.01)
    raise AssertionError("the dump was never written")


def test_a_written_dump_is_renamed_by_check_only(tmp_path: Path) -> None:
    gate = threading.Event()
    w = _writer(tmp_path)
    assert w.check() == SERIALIZER_STATE.NOT_SERIALIZING
    w.start(lambda: lambda: [b"st", b"ate"] if gate.wait(10) else [], *ENTRIES, ["a:1", "b:2"])
    assert w.check() == SERIALIZER_STATE.SERIALIZING
    assert not (tmp_path / "raft.dump").exists()
    gate.set()
    assert _wait_written(w) == SERIALIZER_STATE.SUCCESS
    state, last, prev, cluster = unpack_dump(
        msgpack.unpackb((tmp_path / "raft.dump").read_bytes()), "raft.dump")
    assert (state, last, prev, cluster) == (b"state", (b"\x01", 9, 2), (b"\x01", 8, 2),
                                            ["a:1", "b:2"])
    assert not (tmp_path / "raft.dump.next").exists()
    assert w.check() == SERIALIZER_STATE.NOT_SERIALIZING


def test_a_dump_older_than_an_installed_one_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "raft.dump").write_bytes(b"installed")
    gate = threading.Event()
    w = _writer(tmp_path)
    w.start(lambda: lambda: [b"old"] if gate.wait(10) else [], *ENTRIES, [])
    w.installed()  # the leader's dump replaced raft.dump meanwhile
    gate.set()
    assert _wait_written(w) == SERIALIZER_STATE.FAILED
    assert (tmp_path / "raft.dump").read_bytes() == b"installed"
    assert not (tmp_path / "raft.dump.next").exists()


def test_a_failed_encoding_leaves_the_dump_alone(tmp_path: Path) -> None:
    (tmp_path / "raft.dump").write_bytes(b"previous")

    def broken() -> list[bytes]:
        raise RuntimeError("boom")

    w = _writer(tmp_path)
    w.start(lambda: broken, *ENTRIES, [])
    assert _wait_written(w) == SERIALIZER_STATE.FAILED
    assert (tmp_path / "raft.dump").read_bytes() == b"previous"


def test_a_dump_that_cannot_start_is_reported_failed_once(tmp_path: Path) -> None:
    def no_freeze() -> Callable[[], list[bytes]]:
        raise RuntimeError("boom")

    w = _writer(tmp_path)
    w.start(no_freeze, *ENTRIES, [])
    assert w.check() == SERIALIZER_STATE.FAILED
    assert w.check() == SERIALIZER_STATE.NOT_SERIALIZING
    w.start(lambda: lambda: [b"s"], *ENTRIES, [])  # the next one goes ahead
    assert _wait_written(w) == SERIALIZER_STATE.SUCCESS


def test_a_stale_partial_dump_is_removed_on_start(tmp_path: Path) -> None:
    (tmp_path / "raft.dump.next").write_bytes(b"half a dump")
    _writer(tmp_path)
    assert not (tmp_path / "raft.dump.next").exists()


@pytest.mark.slow
async def test_the_leader_keeps_leading_and_committing_while_dumps_are_written(
    tmp_path: Path,
) -> None:
    """Every member compacts after 50 entries, and each dump takes 5 s to encode: longer than
    the 2-4 s election timeout (long, so that a loaded machine elects no one by itself).
    Written on the tick thread, it cost the leader its term."""
    gate = threading.Event()
    encoding = threading.Semaphore(0)

    def freeze():  # type: ignore[no-untyped-def]
        def encode() -> list[bytes]:
            encoding.release()
            gate.wait(5.0)
            return [b"state"]

        return encode

    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    secret = new_secret()
    loop = asyncio.get_running_loop()
    nodes = [
        RaftNode(RaftSettings(self_addr=a, peers=tuple(x for x in addrs if x != a),
                              secret=secret, data_dir=tmp_path / a.replace(":", "_"),
                              heartbeat_interval=0.1, election_timeout_min=2.0,
                              election_timeout_max=4.0, leader_fallback_timeout=3.0,
                              snapshot_entries=50),
                 lambda item: None, freeze, lambda b: None, loop=loop)
        for a in addrs
    ]
    try:
        async with asyncio.timeout(30):
            while sum(n.is_leader for n in nodes) != 1:
                await asyncio.sleep(0.02)
        leader = next(n for n in nodes if n.is_leader)
        term = leader.term
        for i in range(60):
            await leader.propose(b"w%d" % i)
        async with asyncio.timeout(10):  # the dumps are being encoded
            while not encoding.acquire(blocking=False):
                await asyncio.sleep(0.01)
        started = loop.time()
        committed = 0
        while loop.time() - started < 4.5:  # all of it while the dumps are still encoding
            await leader.propose(b"during")
            committed += 1
        assert leader.is_leader and leader.term == term
        assert all(n.term == term for n in nodes)
        assert committed > 10
        gate.set()
        async with asyncio.timeout(10):  # then every member renames its dump and compacts
            while not all((tmp_path / n.self_addr.replace(":", "_") / "raft.dump").exists()
                          and n.status().log_len < 60 for n in nodes):
                await asyncio.sleep(0.02)
        assert leader.term == term
    finally:
        gate.set()
        for n in nodes:
            n.close()


def test_a_dump_written_in_parts_is_the_dump_packed_whole(tmp_path: Path) -> None:
    state = [b"\x93", b"a" * 70_000, b"b"]
    w = _writer(tmp_path)
    w.start(lambda: lambda: state, *ENTRIES, ["b:2", "a:1"])
    assert _wait_written(w) == SERIALIZER_STATE.SUCCESS
    assert (tmp_path / "raft.dump").read_bytes() == msgpack.packb({
        "magic": "raftreg-raft-dump", "format": 2, "state": b"".join(state),
        "entries": [list(ENTRIES[0]), list(ENTRIES[1])], "cluster": ["a:1", "b:2"]})


@pytest.mark.parametrize("size", [0, 255, 256, 65_535, 65_536])
def test_a_dump_is_the_same_bytes_whatever_the_state_size(size: int) -> None:
    state = b"s" * size
    assert pack_dump(state, *ENTRIES, ["a:1"]) == msgpack.packb({
        "magic": "raftreg-raft-dump", "format": 2, "state": state,
        "entries": [list(ENTRIES[0]), list(ENTRIES[1])], "cluster": ["a:1"]})


@pytest.mark.slow
async def test_a_follower_that_installs_a_slow_dump_does_not_depose_the_leader(
    tmp_path: Path,
) -> None:
    """The third member starts after the leader compacted its log, so it gets the leader's
    dump; restoring it takes 5 s, longer than the 2-4 s election timeout. Its election timer
    must start after the install: it used to start an election at once, a new term."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    secret = new_secret()
    loop = asyncio.get_running_loop()
    restored = asyncio.Event()

    def slow_restore(state: bytes) -> None:  # tick thread of the late member
        time.sleep(5.0)
        loop.call_soon_threadsafe(restored.set)

    def member(a: str, restore: Callable[[bytes], None]) -> RaftNode:
        return RaftNode(RaftSettings(self_addr=a, peers=tuple(x for x in addrs if x != a),
                                     secret=secret, data_dir=tmp_path / a.replace(":", "_"),
                                     heartbeat_interval=0.1, election_timeout_min=2.0,
                                     election_timeout_max=4.0, leader_fallback_timeout=3.0,
                                     snapshot_entries=50),
                        lambda item: None, lambda: lambda: [b"state"], restore, loop=loop)

    nodes = [member(a, lambda b: None) for a in addrs[:2]]
    try:
        async with asyncio.timeout(30):
            while sum(n.is_leader for n in nodes) != 1:
                await asyncio.sleep(0.02)
        leader = next(n for n in nodes if n.is_leader)
        for i in range(150):
            await leader.propose(b"w%d" % i)
        async with asyncio.timeout(30):  # compacted: a new member can only get the dump
            while leader.status().log_len >= 150:
                await asyncio.sleep(0.02)
        term = leader.term
        nodes.append(member(addrs[2], slow_restore))
        async with asyncio.timeout(30):
            await restored.wait()
        await asyncio.sleep(4.5)  # longer than an election timeout after the install
        await leader.propose(b"after")
        assert leader.is_leader and [n.term for n in nodes] == [term] * 3
    finally:
        for n in nodes:
            n.close()


def test_a_dump_rests_as_long_as_it_computes() -> None:
    """`_blocks(rest=1.0)`: after each block the thread sleeps the CPU time that block took,
    so an encoding uses at most half a core (wall >= 2 x CPU over whole blocks)."""

    def busy_chunks() -> Any:
        for _ in range(6):
            t = time.thread_time()
            while time.thread_time() - t < 0.02:  # 20 ms of CPU per 1 KiB block
                pass
            yield b"x" * 1024

    for rest, factor in ((0.0, 1.0), (1.0, 2.0)):
        wall, cpu = time.monotonic(), time.thread_time()
        blocks = _blocks(busy_chunks(), size=1024, rest=rest)
        wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
        assert blocks == [b"x" * 1024] * 6
        assert wall >= factor * cpu * 0.95, (rest, wall, cpu)
    assert wall < 10  # bounded: it rests, it does not stall
