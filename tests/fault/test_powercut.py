"""The power-cut FUSE layer (raftreg/testing/powercut/) on its own: what survives a cut.

Every test writes through a real FUSE mount with plain system calls (as a node does), cuts the
power, mounts again and looks at what survived. A few check the harness itself (no mount left
behind, a dead harness or a killed daemon unmounts).
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftreg.testing.powercut import BLOCK, Disk, DiskModel, fuse_available, mounts_under

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

_WHY = fuse_available()
if _WHY is not None:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must be able to run the power-cut tests: {_WHY}")
    pytestmark.append(pytest.mark.skip(reason=f"FUSE unavailable: {_WHY}"))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    d = Disk(tmp_path / "store", tmp_path / "mnt")
    d.mount()
    try:
        yield d
    finally:
        d.unmount()
        assert mounts_under(tmp_path) == [], "a mount was left behind"


def cut(d: Disk, **kw: object) -> dict[str, object]:
    report = d.cut(**kw)  # type: ignore[arg-type]
    assert not any(d.mountpoint.iterdir()), "the mount point must be empty while unmounted"
    d.mount()
    return report


def write(path: Path, data: bytes, *, sync: bool = False, append: bool = False,
          offset: int | None = None) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# ------------------------------------------------------------------------------- file data


def test_fsynced_write_survives_and_unsynced_write_is_gone(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "a", b"synced", sync=True)
    write(m / "b", b"never synced")
    fsync_dir(m)
    write(m / "a", b"+unsynced tail", append=True)
    assert (m / "a").read_bytes() == b"synced+unsynced tail"  # the live view has it all
    report = cut(disk)
    assert names(m) == ["a", "b"]
    assert (m / "a").read_bytes() == b"synced"
    assert (m / "b").read_bytes() == b""  # its entry was synced, its data never
    assert report["lost"] == []


def test_overwrites_of_synced_data_are_undone_across_blocks(disk: Disk) -> None:
    m = disk.mountpoint
    base = bytes(i % 251 for i in range(5 * BLOCK + 123))
    write(m / "f", base, sync=True)
    fsync_dir(m)
    write(m / "f", b"X" * (2 * BLOCK), offset=BLOCK - 10)  # spans three blocks
    write(m / "f", b"Y" * 50, offset=5 * BLOCK + 100)  # crosses the old end of file
    write(m / "f", b"Z", offset=7 * BLOCK)  # a hole past the end
    assert (m / "f").stat().st_size == 7 * BLOCK + 1
    cut(disk)
    assert (m / "f").read_bytes() == base


def test_fdatasync_makes_the_current_content_durable_then_later_changes_go(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "f", b"0123456789", sync=True)
    fsync_dir(m)
    write(m / "f", b"ab", offset=2, sync=True)
    write(m / "f", b"CD", offset=6)
    cut(disk)
    assert (m / "f").read_bytes() == b"01ab456789"


def test_truncated_tail_comes_back_unless_synced(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "f", b"x" * 3 * BLOCK + b"tail", sync=True)
    write(m / "g", b"y" * 100, sync=True)
    fsync_dir(m)
    os.truncate(m / "f", 10)
    write(m / "f", b"after", append=True)  # written after the truncation, over the old data
    os.truncate(m / "g", 40)
    fsync_file(m / "g")
    with open(m / "h", "wb"):
        pass
    cut(disk)
    assert (m / "f").read_bytes() == b"x" * 3 * BLOCK + b"tail"
    assert (m / "g").read_bytes() == b"y" * 40
    assert not (m / "h").exists()


def test_open_with_o_trunc_is_undone(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "f", b"durable", sync=True)
    fsync_dir(m)
    with open(m / "f", "wb") as f:  # O_TRUNC
        f.write(b"new")
    cut(disk)
    assert (m / "f").read_bytes() == b"durable"


def test_shared_mmap_writes_count_only_once_msynced(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "f", b"." * 2 * BLOCK, sync=True)
    write(m / "g", b"." * 2 * BLOCK, sync=True)
    fsync_dir(m)
    for name, sync in (("f", True), ("g", False)):
        fd = os.open(m / name, os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        mm[:5] = b"HELLO"
        mm[BLOCK:BLOCK + 5] = b"WORLD"
        if sync:
            mm.flush()  # msync: reaches FUSE as fsync
        mm.close()
        os.close(fd)
    cut(disk)
    assert (m / "f").read_bytes()[:5] == b"HELLO"
    assert (m / "f").read_bytes()[BLOCK:BLOCK + 5] == b"WORLD"
    assert (m / "g").read_bytes() == b"." * 2 * BLOCK


def test_writes_of_a_killed_process_are_dropped_but_its_syncs_kept(disk: Disk) -> None:
    m = disk.mountpoint
    prog = (
        "import os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)\n"
        "os.write(fd, b'synced;'); os.fdatasync(fd)\n"
        "d = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY); os.fsync(d)\n"
        "os.write(fd, b'unsynced;')\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", prog, str(m / "log")], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    cut(disk)
    assert (m / "log").read_bytes() == b"synced;"


# ------------------------------------------------------------------------------- directory entries


def test_create_without_a_directory_fsync_is_gone(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "kept", b"k", sync=True)
    fsync_dir(m)
    write(m / "new", b"data synced, entry not", sync=True)
    report = cut(disk)
    assert names(m) == ["kept"]
    assert report["lost"] == ["/new"]


def test_directory_fsync_without_file_fsync_keeps_an_empty_file(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "new", b"data never synced")
    fsync_dir(m)
    cut(disk)
    assert (m / "new").read_bytes() == b""


def test_unlink_is_undone_without_a_directory_fsync(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "a", b"a", sync=True)
    write(m / "b", b"b", sync=True)
    fsync_dir(m)
    os.unlink(m / "a")
    os.unlink(m / "b")
    fsync_dir(m)  # b's removal is durable; a's too (same directory)
    write(m / "c", b"c", sync=True)
    fsync_dir(m)
    os.unlink(m / "c")
    assert names(m) == []
    cut(disk)
    assert names(m) == ["c"]
    assert (m / "c").read_bytes() == b"c"


def test_unlinked_file_keeps_its_durable_content_not_later_writes(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "f", b"durable", sync=True)
    fsync_dir(m)
    fd = os.open(m / "f", os.O_RDWR)
    os.unlink(m / "f")
    os.pwrite(fd, b"LATER", 0)  # through a descriptor of the unlinked file
    os.close(fd)
    cut(disk)
    assert (m / "f").read_bytes() == b"durable"


def test_atomic_replace_by_rename(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "conf", b"v1", sync=True)
    fsync_dir(m)
    # the right way: write tmp, fsync it, rename over, fsync the directory
    write(m / "conf.tmp", b"v2", sync=True)
    os.rename(m / "conf.tmp", m / "conf")
    fsync_dir(m)
    # without the directory fsync the rename is not durable: v2 stays, tmp is gone
    write(m / "conf.tmp", b"v3", sync=True)
    os.rename(m / "conf.tmp", m / "conf")
    assert (m / "conf").read_bytes() == b"v3"
    cut(disk)
    assert names(m) == ["conf"]
    assert (m / "conf").read_bytes() == b"v2"


def test_rename_without_any_sync_brings_back_the_old_name(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "old", b"content", sync=True)
    fsync_dir(m)
    os.rename(m / "old", m / "new")
    write(m / "new", b"+more", append=True)
    cut(disk)
    assert names(m) == ["old"]
    assert (m / "old").read_bytes() == b"content"


def test_rename_with_unsynced_data_keeps_only_the_synced_part(disk: Disk) -> None:
    m = disk.mountpoint
    write(m / "tmp", b"half", sync=True)
    write(m / "tmp", b"+rest", append=True)  # the classic bug: rename before fsync
    os.rename(m / "tmp", m / "final")
    fsync_dir(m)
    cut(disk)
    assert names(m) == ["final"]
    assert (m / "final").read_bytes() == b"half"


def test_subdirectories_and_a_rename_between_directories(disk: Disk) -> None:
    m = disk.mountpoint
    os.mkdir(m / "d1")
    os.mkdir(m / "d2")
    os.mkdir(m / "unsynced")
    fsync_dir(m)  # d1, d2 durable (unsynced/ too, but nothing in it will be)
    write(m / "d1" / "f", b"f", sync=True)
    fsync_dir(m / "d1")
    write(m / "unsynced" / "x", b"x", sync=True)
    os.mkdir(m / "gone")  # its entry in / is never synced
    write(m / "gone" / "y", b"y", sync=True)
    fsync_dir(m / "gone")
    os.rename(m / "d1" / "f", m / "d2" / "g")
    fsync_dir(m / "d2")  # one side synced: the whole rename is durable
    cut(disk)
    assert names(m) == ["d1", "d2", "unsynced"]
    assert names(m / "d1") == []
    assert names(m / "d2") == ["g"]
    assert names(m / "unsynced") == []
    assert (m / "d2" / "g").read_bytes() == b"f"


def test_rmdir_is_undone_without_a_directory_fsync(disk: Disk) -> None:
    m = disk.mountpoint
    os.mkdir(m / "d")
    fsync_dir(m)
    os.rmdir(m / "d")
    cut(disk)
    assert names(m) == ["d"]


# ------------------------------------------------------------------------------- torn tails


def test_torn_cut_keeps_a_prefix_of_the_unsynced_tail(disk: Disk) -> None:
    m = disk.mountpoint
    synced = b"S" * 1000
    tail = bytes(range(256)) * 40
    seen = set()
    for seed in range(12):
        write(m / "wal", synced, sync=True)
        fsync_dir(m)
        write(m / "wal", tail, append=True)
        report = cut(disk, torn=True, seed=seed)
        got = (m / "wal").read_bytes()
        assert got[: len(synced)] == synced
        rest = got[len(synced):]
        assert len(rest) <= len(tail)
        stripped = rest.rstrip(b"\0")
        assert tail.startswith(stripped), "a torn tail is a prefix (maybe ending in zeros)"
        seen.add(len(rest))
        assert report["torn"] is True
        os.unlink(m / "wal")
        fsync_dir(m)
    assert len(seen) > 3, seen  # the prefixes differ from seed to seed


def test_torn_cut_may_keep_a_directory_s_unsynced_entries(disk: Disk) -> None:
    m = disk.mountpoint
    kept = 0
    for seed in range(10):
        write(m / f"f{seed}", b"data")
        report = cut(disk, torn=True, seed=seed)
        present = (m / f"f{seed}").exists()
        assert present == ("/" in report["dirs_kept"])  # type: ignore[operator]
        kept += present
        if present:
            assert len((m / f"f{seed}").read_bytes()) <= 4
            os.unlink(m / f"f{seed}")
            fsync_dir(m)
    assert 0 < kept < 10


# ------------------------------------------------------------------------------- the harness


def test_operations_after_the_cut_fail(tmp_path: Path) -> None:
    model = DiskModel(tmp_path / "s", real_sync=False)
    fd = model.create("/f", 0o644, os.O_RDWR)
    model.cut()
    with pytest.raises(OSError) as e:
        model.write(fd, b"late", 0)
    assert e.value.errno == 5  # EIO
    model.release(fd)


@pytest.mark.parametrize("metadata", ["strict", "ordered"])
def test_ordered_metadata_commits_every_earlier_namespace_change(tmp_path: Path,
                                                                 metadata: str) -> None:
    model = DiskModel(tmp_path / "s", real_sync=False, metadata=metadata)
    model.mkdir("/member", 0o700)  # never synced in its parent (etcd does this)
    model.mkdir("/member/wal", 0o700)
    fd = model.create("/member/wal/0.wal", 0o644, os.O_RDWR)
    model.write(fd, b"record", 0)
    model.fsync(fd)  # the file's data, and (ordered) every namespace change so far
    model.release(fd)
    fd = model.create("/later", 0o644, os.O_RDWR)  # after the last sync: gone either way
    model.release(fd)
    report = model.cut()
    data = tmp_path / "s" / "data"
    if metadata == "ordered":
        assert (data / "member" / "wal" / "0.wal").read_bytes() == b"record"
        assert report["lost"] == ["/later"]
    else:
        assert sorted(os.listdir(data)) == []
        assert "/member/wal/0.wal" in report["lost"]  # type: ignore[operator]


def test_a_cut_during_a_sync_leaves_the_data_unsynced(tmp_path: Path) -> None:
    model = DiskModel(tmp_path / "s", real_sync=False, sync_delay_s=0.3)
    fd = model.create("/wal", 0o644, os.O_RDWR)
    model.fsync(fd)  # an empty file, durable (its entry is not: sync the directory)
    model.fsyncdir("/")
    model.write(fd, b"synced", 0)
    model.fsync(fd)
    model.write(fd, b"+in flight", 6)
    errors: list[OSError] = []
    late: list[OSError] = []

    def sync() -> None:
        try:
            model.fsync(fd)
        except OSError as e:
            errors.append(e)

    def write_during_sync() -> None:
        try:
            model.write(fd, b"!", 16)  # waits for the sync, then finds the power off
        except OSError as e:
            late.append(e)

    t = threading.Thread(target=sync)
    t.start()
    time.sleep(0.1)
    w = threading.Thread(target=write_during_sync)
    w.start()
    report = model.cut()
    t.join()
    w.join()
    assert [e.errno for e in errors] == [5] and [e.errno for e in late] == [5]
    assert report["files"]["/wal"]["kept"] == 6  # type: ignore[index]
    assert (tmp_path / "s" / "data" / "wal").read_bytes() == b"synced"
    model.release(fd)


def test_a_write_during_a_sync_waits_and_is_not_covered_by_it(tmp_path: Path) -> None:
    model = DiskModel(tmp_path / "s", real_sync=False, sync_delay_s=0.2)
    fd = model.create("/f", 0o644, os.O_RDWR)
    model.fsyncdir("/")
    model.write(fd, b"one", 0)
    t = threading.Thread(target=model.fsync, args=(fd,))
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    model.write(fd, b"two", 3)
    assert time.monotonic() - started > 0.1  # it waited for the sync
    t.join()
    model.cut()
    assert (tmp_path / "s" / "data" / "f").read_bytes() == b"one"
    model.release(fd)


def test_no_mount_survives_the_harness_or_the_daemon(tmp_path: Path) -> None:
    # the harness dies: the daemon's stdin closes, it unmounts and exits
    d = Disk(tmp_path / "s1", tmp_path / "m1")
    d.mount()
    assert d.proc is not None and d.proc.stdin is not None
    d.proc.stdin.close()
    d.proc.wait(timeout=10)
    assert mounts_under(tmp_path / "m1") == []
    d.unmount()
    # the daemon is killed: auto_unmount clears the mount
    d2 = Disk(tmp_path / "s2", tmp_path / "m2")
    d2.mount()
    assert d2.proc is not None
    d2.proc.kill()
    d2.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while mounts_under(tmp_path / "m2") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mounts_under(tmp_path / "m2") == []
    d2.unmount()
    d2.mount()  # and the disk can be mounted again
    d2.unmount()
    assert mounts_under(tmp_path) == []
