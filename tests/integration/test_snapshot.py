"""Backup and restore on real processes: a snapshot taken under load restores into a new cluster
with exactly the state at the snapshot's revision."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.common.types import KeyValue
from raftreg.config import load_config
from raftreg.errors import FailedPrecondition, InvalidArgument
from raftreg.server.restore import restore_cluster
from raftreg.store.backup import decode_backup
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def cli(*args: str, ok: bool = True) -> str:
    p = subprocess.run([sys.executable, "-m", "raftreg.cli", *args], capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode == 0) == ok, p.stderr
    return p.stdout + p.stderr


def view(kvs: tuple[KeyValue, ...]) -> list[tuple[bytes, bytes, int, int, int, int]]:
    return [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in kvs]


async def test_a_snapshot_under_load_restores_exactly(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "a") as a:
        a.start()
        a.wait_leader()
        async with GrpcRegistryClient(a.endpoints) as client:
            lease = await client.lease_grant(600)
            for i in range(50):
                await client.put(f"base/{i}", f"v{i}", lease=lease.id if i % 5 == 0 else 0)
            await client.delete("base/7")
            stop = asyncio.Event()
            n = itertools.count()

            async def load() -> None:
                while not stop.is_set():
                    i = next(n)
                    await asyncio.gather(*(client.put(f"load/{i % 97}", f"{i}-{j}")
                                           for j in range(8)))

            async def revision_passes(target: int) -> None:
                async with asyncio.timeout(20):
                    while (await client.get("x", count_only=True)).revision <= target:
                        await asyncio.sleep(0.02)

            writers = [asyncio.create_task(load()) for _ in range(4)]
            await revision_passes(base_rev := (await client.get("x")).revision + 200)
            blob = await client.snapshot()  # taken while the load runs
            rev = decode_backup(blob).revision
            assert rev > base_rev
            await revision_passes(rev + 200)  # the load went on after it
            stop.set()
            await asyncio.gather(*writers)
            expected = await client.get(b"\0", range_end=b"\0", revision=rev)
            assert expected.count > 50
        # the CLI's save goes through the same RPC, into a file, verified
        saved = tmp_path / "backup.db"
        out = cli("--endpoints", ",".join(a.endpoints), "snapshot", "save", str(saved))
        assert f"Snapshot saved at {saved}" in out
        assert "keys=" in cli("snapshot", "status", str(saved))

    b = ProcessCluster(tmp_path / "b")
    cfg = load_config(b.config_path)
    restored, dirs = restore_cluster(cfg, blob)
    assert restored.revision == rev and len(dirs) == 3
    with pytest.raises(FailedPrecondition, match="already holds raft data"):
        restore_cluster(cfg, blob)  # never over existing data
    c = ProcessCluster(tmp_path / "c")
    out = cli("snapshot", "restore", str(saved), "--config", str(c.config_path))
    assert out.count("restored revision") == 3
    with b:
        b.start()
        b.wait_leader()
        async with GrpcRegistryClient(b.endpoints) as client:
            got = await client.get(b"\0", range_end=b"\0")
            assert got.revision == rev
            assert view(got.kvs) == view(expected.kvs)
            assert lease.id in await client.lease_list()
            ttl = await client.lease_time_to_live(lease.id, keys=True)
            assert len(ttl.keys) == 10 and ttl.ttl > 500
            r = await client.put("after", "restore")
            assert r.revision == rev + 1
            # a member added later starts empty and must receive the restored state too
            n4 = b.add_node()
            await client.member_add(n4, b.raft[n4], b.client[n4])
            b.start(n4, join=True)
        st = b.wait_converged()
        assert st.header.revision == rev + 1
        async with GrpcRegistryClient([b.client[n4]]) as only_n4:
            got = await only_n4.get(b"\0", range_end=b"\0", serializable=True)
            assert got.revision == rev + 1
            assert [kv for kv in view(got.kvs) if kv[0] != b"after"] == view(expected.kvs)


def test_a_corrupt_backup_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    c = ProcessCluster(tmp_path / "c")
    cfg = load_config(c.config_path)
    with pytest.raises(InvalidArgument, match="not a raftreg backup"):
        restore_cluster(cfg, b'{"not": "a backup"}')
    (tmp_path / "foreign.db").write_bytes(b"SQLite format 3\0" + bytes(100))
    out = cli("snapshot", "restore", str(tmp_path / "foreign.db"), "--config",
              str(c.config_path), ok=False)
    assert "Error: not a raftreg backup" in out
    assert not any(cfg.data_dir(n).exists() for n in cfg.nodes)
