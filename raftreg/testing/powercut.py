"""TEST ONLY power cuts: a FUSE file system that forgets every write its user had not synced.

A node's data dir is the mount point of a small FUSE file system (one daemon process per node,
`python -m raftreg.testing.powercut`) that passes every operation through to a backing
directory and keeps track of what a real disk would still hold after the power went, as
Jepsen's LazyFS does for etcd. The node's own code never decides what counts as synced:

- file data (writes, truncations) is durable once the file is fsync'ed or fdatasync'ed (any
  descriptor of it, or msync of a shared mapping, which reaches FUSE as an fsync);
- a directory entry (create, mkdir, rename, unlink, rmdir) is durable once the directory that
  holds it is fsync'ed. A rename between two directories is atomic, as in a journaling file
  system: syncing either directory makes both of its halves durable;
- everything on the backing directory when the daemon starts is durable.

That is the strict (POSIX) model, the default. `metadata="ordered"` models a journaling file
system such as ext4 (data=ordered), where one journal commits metadata in order: ANY fsync,
fdatasync or directory fsync also makes every earlier create, rename, unlink, mkdir and rmdir
durable, in every directory (file data still needs that file's own sync). Software that never
fsyncs a directory it creates files in survives there, but not under the strict model.

`power_cut` (the daemon's ``cut`` command): every later operation fails with EIO (so the dirty
pages of a killed process that the kernel writes back afterwards never land), the backing
directory is rebuilt to hold exactly the durable state (files at their last synced content and
size, unsynced creates, renames and unlinks undone), and the daemon is unmounted. A new daemon
mounted on the result is what the node restarts on. With ``torn=True`` the cut is a little
kinder, as real disks are: each file keeps a random prefix of what was appended after its last
sync (the tail of that prefix sometimes zeroed: the size reached the disk, the data did not),
and each directory's unsynced entries survive with probability 1/2 (all of that directory's
entries, as if it had been synced).

Bookkeeping: a file's state is `_Unsynced(durable_size, undo)` from its first unsynced change
to its next fsync: `undo` holds, for each 4 KiB block below `durable_size` that was changed
since, the block's durable bytes (saved before the first change: copy on first unsynced
write). A file appended to and fsync'ed over and over (a WAL) therefore costs nothing but the
size. Directory entries: the durable `{name: inode}` of each directory, and for each inode the
one durable entry naming it (no hard links). An unlinked (or renamed-over) inode that a durable
entry still names is moved aside into `orphans/` instead of deleted, so that a cut can bring it
back. Inodes are the backing file system's inode numbers (renames keep them).

Not supported (ENOSYS): hard links, symlinks, device nodes, fallocate (callers fall back to
writing), xattrs. Metadata (mode, times) passes through and is not modelled. Shared writable
mmap works: the mount keeps the kernel page cache (no direct_io), dirty pages reach the daemon
as writes, msync and fsync as fsync; unsynced mapped writes are dropped like any other.

Harness side: `Disk` (one mount: `mount`, `cut`, `unmount`) and `Disks` (one per node). A
daemon exits and unmounts when its stdin closes (the test process died), and is mounted with
fuse's `auto_unmount`, so even a kill -9 of the daemon leaves no mount behind; `Disks.close()`
unmounts everything and `unmount_stale(root)` clears mounts a crashed run left under a
directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 4096
METADATA_MODELS = ("strict", "ordered")
FUSERMOUNT = "fusermount3"


# ---------------------------------------------------------------------------------------------
# The durability model (no FUSE: plain file operations on the backing directory)


@dataclass
class _Unsynced:
    """A file changed since its last fsync: its durable size and the durable bytes of every
    block below that size that changed since (saved before the first change)."""

    durable_size: int
    undo: dict[int, bytes] = field(default_factory=dict)


class DiskModel:
    """Pass-through file operations on `store/data` that keep what a power cut would leave.

    Paths are relative to the mount ("/", "/raft.wal", ...). Every method runs under one lock;
    the FUSE adapter (`PowerCutOps`) and the unit tests call these directly.
    """

    def __init__(self, store: Path, *, real_sync: bool = True, sync_delay_s: float = 0.0,
                 metadata: str = "strict") -> None:
        if metadata not in METADATA_MODELS:
            raise ValueError(f"metadata model {metadata!r}: one of {', '.join(METADATA_MODELS)}")
        self.ordered = metadata == "ordered"
        self.ns_changed = False  # a namespace change since the last commit of all directories
        self.store = Path(store)
        self.root = self.store / "data"
        self.orphans = self.store / "orphans"
        self.real_sync = real_sync
        self.sync_delay_s = sync_delay_s
        self.syncing: dict[int, threading.Event] = {}  # inode -> set when its sync is over
        self.root.mkdir(parents=True, exist_ok=True)
        self.orphans.mkdir(exist_ok=True)
        self.lock = threading.Lock()  # never taken twice: public methods call only _helpers
        self.cut_done = False  # the power is off: every operation fails
        self.rebuilt = False  # the backing directory holds the durable state only
        self.unsynced: dict[int, _Unsynced] = {}  # inode -> unsynced data changes
        self.durable: dict[int, dict[str, int]] = {}  # dir inode -> durable entries
        self.durable_at: dict[int, tuple[int, str]] = {}  # inode -> its durable entry
        self.dirs: set[int] = set()  # inodes that are directories
        self.fd_ino: dict[int, int] = {}
        self.counts: dict[str, int] = {"write": 0, "fsync": 0, "fsyncdir": 0}
        self.root_ino = os.lstat(self.root).st_ino
        # orphans a previous daemon left (after a cut there are none) are not durable
        for p in self.orphans.iterdir():
            _remove(p)
        self._scan(self.root)

    def _scan(self, d: Path) -> None:
        ino = os.lstat(d).st_ino
        self.dirs.add(ino)
        entries: dict[str, int] = {}
        for p in d.iterdir():
            st = os.lstat(p)
            entries[p.name] = st.st_ino
            self.durable_at[st.st_ino] = (ino, p.name)
            if stat.S_ISDIR(st.st_mode):
                self._scan(p)
        self.durable[ino] = entries

    # ------------------------------------------------------------------ helpers

    def path(self, rel: str) -> Path:
        rel = rel.lstrip("/")
        return self.root / rel if rel else self.root

    def _check(self) -> None:
        if self.cut_done:
            raise OSError(errno.EIO, "the power is off")

    def metadata_change(self) -> None:
        """Mode, owner and times pass through unmodelled; only refused once the power is off."""
        self._check()

    def _ino(self, rel: str) -> int:
        return os.lstat(self.path(rel)).st_ino

    def _parent_ino(self, rel: str) -> int:
        return os.lstat(self.path(rel).parent).st_ino

    def _save(self, ino: int, fd: int, start: int, end: int) -> None:
        """Before [start, end) of file `ino` changes: keep the durable bytes of each block of it
        below the durable size that has not been saved since the last sync."""
        u = self.unsynced.get(ino)
        if u is None:
            u = self.unsynced[ino] = _Unsynced(os.fstat(fd).st_size)
        end = min(end, u.durable_size)
        if start >= end:
            return
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            if b not in u.undo:
                n = min(BLOCK, u.durable_size - b * BLOCK)
                data = os.pread(fd, n, b * BLOCK)
                u.undo[b] = data + b"\0" * (n - len(data))  # a hole or a shorter live file

    def _forget(self, ino: int) -> None:
        self.unsynced.pop(ino, None)
        self.durable.pop(ino, None)
        self.dirs.discard(ino)

    def _set_durable(self, dino: int, name: str, ino: int) -> None:
        """Make `dino/name -> ino` durable: whatever was there loses it, and `ino` loses any
        other durable entry (the other half of a rename)."""
        entries = self.durable.setdefault(dino, {})
        prev = entries.get(name)
        if prev is not None and prev != ino:
            self.durable_at.pop(prev, None)
            self._drop_orphan(prev)
        old = self.durable_at.get(ino)
        if old is not None and old != (dino, name):
            self.durable.get(old[0], {}).pop(old[1], None)
        entries[name] = ino
        self.durable_at[ino] = (dino, name)

    def _drop_orphan(self, ino: int) -> None:
        """`ino` lost its durable entry: if it is an orphan (unlinked), it is gone for good."""
        p = self.orphans / str(ino)
        if ino not in self.durable_at and os.path.lexists(p):
            _remove(p)
            self._forget(ino)

    def _live_entries(self, d: Path) -> dict[str, int]:
        return {p.name: os.lstat(p).st_ino for p in d.iterdir()}

    def _live_locations(self) -> dict[int, Path]:
        """Every inode in the live tree or among the orphans -> its backing path."""
        out: dict[int, Path] = {}
        for top in (self.root, self.orphans):
            for dirpath, dirnames, filenames in os.walk(top):
                for n in (*dirnames, *filenames):
                    p = Path(dirpath) / n
                    out[os.lstat(p).st_ino] = p
        return out

    def _set_aside(self, p: Path, ino: int) -> None:
        """`p` (inode `ino`) leaves the live tree: kept as an orphan while a durable entry
        names it, deleted otherwise."""
        self.ns_changed = True
        if ino in self.durable_at:
            os.rename(p, self.orphans / str(ino))
        else:
            _remove(p)
            self._forget(ino)

    # ------------------------------------------------------------------ file operations

    def create(self, rel: str, mode: int, flags: int = os.O_RDWR) -> int:
        with self.lock:
            self._check()
            p = self.path(rel)
            clean = _backing_flags(flags) & ~os.O_EXCL
            try:
                fd = os.open(p, clean | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                return self._open(rel, flags)
            ino = os.fstat(fd).st_ino
            self.unsynced[ino] = _Unsynced(0)  # a new file: nothing of it is durable
            self.ns_changed = True
            self.fd_ino[fd] = ino
            return fd

    def open(self, rel: str, flags: int) -> int:
        with self.lock:
            self._check()
            return self._open(rel, flags)

    def _open(self, rel: str, flags: int) -> int:
        fd = os.open(self.path(rel), _backing_flags(flags))
        ino = os.fstat(fd).st_ino
        self.fd_ino[fd] = ino
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self._truncate_fd(fd, ino, 0)
        return fd

    def read(self, fd: int, size: int, offset: int) -> bytes:
        with self.lock:
            self._check()
            return os.pread(fd, size, offset)

    def write(self, fd: int, data: bytes, offset: int) -> int:
        with self.lock:
            self._check()
            ino = self.fd_ino.get(fd) or os.fstat(fd).st_ino
            self._changing(ino)
            self._save(ino, fd, offset, offset + len(data))
            self.counts["write"] += 1
            return os.pwrite(fd, data, offset)

    def _truncate_fd(self, fd: int, ino: int, length: int) -> None:
        self._changing(ino)
        self._save(ino, fd, length, 1 << 62)
        os.ftruncate(fd, length)

    def truncate(self, rel: str, length: int, fd: int | None = None) -> None:
        with self.lock:
            self._check()
            if fd is not None:
                self._truncate_fd(fd, self.fd_ino.get(fd) or os.fstat(fd).st_ino, length)
                return
            tfd = os.open(self.path(rel), os.O_RDWR)
            try:
                self._truncate_fd(tfd, os.fstat(tfd).st_ino, length)
            finally:
                os.close(tfd)

    def fsync(self, fd: int, datasync: bool = False) -> None:
        """The file's current content becomes durable when the sync returns. The sync itself
        (the backing fsync, plus `sync_delay_s`) runs outside the lock, so a cut can come while
        it is under way: then it never completed (EIO) and the data stays unsynced. Writes and
        truncations of the same file wait until it is done (a sync covers what was written
        before it)."""
        with self.lock:
            self._check()
            ino = self.fd_ino.get(fd) or os.fstat(fd).st_ino
            done = self.syncing.get(ino)
            if done is None:
                done = self.syncing[ino] = threading.Event()
        try:
            if self.sync_delay_s > 0:
                time.sleep(self.sync_delay_s)
            if self.real_sync:
                (os.fdatasync if datasync else os.fsync)(fd)
            with self.lock:
                self._check()
                self.unsynced.pop(ino, None)
                self.counts["fsync"] += 1
                if self.ordered and self.ns_changed:
                    self._commit_all()
        finally:
            with self.lock:
                if self.syncing.get(ino) is done:
                    del self.syncing[ino]
            done.set()

    def _changing(self, ino: int) -> None:
        """Called with the lock held before a file's data changes: wait (lock released) while a
        sync of that file is under way."""
        while True:
            self._check()
            done = self.syncing.get(ino)
            if done is None:
                return
            self.lock.release()
            try:
                done.wait()
            finally:
                self.lock.acquire()

    def release(self, fd: int) -> None:
        with self.lock:
            self.fd_ino.pop(fd, None)
            os.close(fd)

    # ------------------------------------------------------------------ directory operations

    def fsyncdir(self, rel: str) -> None:
        with self.lock:
            self._check()
            if self.ordered:
                self._commit_all()
            else:
                self._commit_dir(self.path(rel))
            self.counts["fsyncdir"] += 1

    def _commit_all(self) -> None:
        """Every directory's live entries become durable (a journal commit)."""
        for dirpath, _dirnames, _filenames in os.walk(self.root):
            self._commit_dir(Path(dirpath))
        self.ns_changed = False

    def _commit_dir(self, d: Path) -> None:
        """The directory's live entries become its durable ones (renames: both halves)."""
        dino = os.lstat(d).st_ino
        live = self._live_entries(d)
        old = dict(self.durable.get(dino, {}))
        moved_out = [ino for name, ino in old.items() if live.get(name) != ino]
        for name, ino in old.items():
            if live.get(name) != ino:
                self.durable[dino].pop(name, None)
                if self.durable_at.get(ino) == (dino, name):
                    del self.durable_at[ino]
        for name, ino in live.items():
            if old.get(name) != ino:
                self._set_durable(dino, name, ino)
        if moved_out:
            where = self._live_locations()
            for ino in moved_out:
                if ino in self.durable_at:
                    continue  # durable here again under another name
                p = where.get(ino)
                if p is not None and p.parent != self.orphans:
                    # renamed into another directory: that half of the rename is durable too
                    self._set_durable(os.lstat(p.parent).st_ino, p.name, ino)
                else:
                    self._drop_orphan(ino)
        if self.real_sync:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def mkdir(self, rel: str, mode: int) -> None:
        with self.lock:
            self._check()
            p = self.path(rel)
            os.mkdir(p, mode)
            self.ns_changed = True
            ino = os.lstat(p).st_ino
            self.dirs.add(ino)
            self.durable[ino] = {}

    def unlink(self, rel: str) -> None:
        with self.lock:
            self._check()
            p = self.path(rel)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, "is a directory")
            self._set_aside(p, st.st_ino)

    def rmdir(self, rel: str) -> None:
        with self.lock:
            self._check()
            p = self.path(rel)
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                raise OSError(errno.ENOTDIR, "not a directory")
            if any(p.iterdir()):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            self._set_aside(p, os.lstat(p).st_ino)

    def rename(self, old: str, new: str) -> None:
        with self.lock:
            self._check()
            src, dst = self.path(old), self.path(new)
            sst = os.lstat(src)
            try:
                dstat = os.lstat(dst)
            except FileNotFoundError:
                dstat = None
            if dstat is not None:
                if dstat.st_ino == sst.st_ino:
                    return
                if stat.S_ISDIR(sst.st_mode) != stat.S_ISDIR(dstat.st_mode):
                    raise OSError(errno.EISDIR if stat.S_ISDIR(dstat.st_mode) else errno.ENOTDIR,
                                  "rename between a file and a directory")
                if stat.S_ISDIR(dstat.st_mode) and any(dst.iterdir()):
                    raise OSError(errno.ENOTEMPTY, "directory not empty")
                if stat.S_ISDIR(sst.st_mode) and str(dst).startswith(str(src) + "/"):
                    raise OSError(errno.EINVAL, "a directory cannot move into itself")
                self._set_aside(dst, dstat.st_ino)  # the replaced inode (maybe still durable)
            os.rename(src, dst)
            self.ns_changed = True

    # ------------------------------------------------------------------ the cut

    def status(self) -> dict[str, Any]:
        """What a cut would drop right now (for tests and logs)."""
        with self.lock:
            where = self._live_locations()
            files = {}
            for ino, u in self.unsynced.items():
                p = where.get(ino)
                name = str(p.relative_to(self.store)) if p is not None else f"#{ino}"
                size = p.stat().st_size if p is not None else -1
                files[name] = {"durable_size": u.durable_size, "size": size,
                               "blocks_changed": len(u.undo)}
            pending = []
            for dirpath, _dirnames, _filenames in os.walk(self.root):
                d = Path(dirpath)
                if self._live_entries(d) != self.durable.get(os.lstat(d).st_ino, {}):
                    pending.append(_rel(self.root, d))
            return {"unsynced_files": files, "unsynced_dirs": pending, "counts": self.counts,
                    "cut": self.cut_done}

    def freeze(self) -> None:
        """The power goes: from now on every operation fails with EIO, and a sync under way
        never completes. (Then kill whoever used the files, then `cut`.)"""
        with self.lock:
            self.cut_done = True

    def cut(self, torn: bool = False, seed: int = 0) -> dict[str, Any]:
        """Rebuild the backing directory to hold exactly the durable state (freezing first if
        `freeze` was not called). Returns what was dropped."""
        with self.lock:
            if self.rebuilt:
                raise OSError(errno.EIO, "already cut")
            self.cut_done = self.rebuilt = True
            rng = random.Random(seed)
            report: dict[str, Any] = {"torn": torn, "files": {}, "lost": [], "dirs_kept": []}
            if torn:  # some directories' unsynced entries made it (whole directories)
                for dirpath, _dirnames, _filenames in sorted(os.walk(self.root)):
                    d = Path(dirpath)
                    if (self._live_entries(d) != self.durable.get(os.lstat(d).st_ino, {})
                            and rng.random() < 0.5):
                        self._commit_dir(d)
                        report["dirs_kept"].append(_rel(self.root, d))
            where = self._live_locations()
            before = {ino: _rel(self.root, p) for ino, p in where.items()
                      if p.is_relative_to(self.root)}
            new = self.store / "recovered"
            if new.exists():
                _remove(new)
            new.mkdir()
            shutil.copymode(self.root, new)
            placed: set[int] = set()
            self._rebuild(self.root_ino, new, "", where, placed, rng, torn, report)
            report["lost"] = sorted(p for ino, p in before.items() if ino not in placed)
            lost = self.store / "lost"
            if lost.exists():
                _remove(lost)
            os.rename(self.root, lost)
            os.rename(new, self.root)
            _remove(lost)
            for p in self.orphans.iterdir():
                _remove(p)
            return report

    def _rebuild(self, dino: int, dst: Path, rel: str, where: dict[int, Path], placed: set[int],
                 rng: random.Random, torn: bool, report: dict[str, Any]) -> None:
        for name, ino in sorted(self.durable.get(dino, {}).items()):
            src = where.get(ino)
            if src is None or ino in placed:
                continue
            target = dst / name
            placed.add(ino)
            if ino in self.dirs:
                target.mkdir()
                shutil.copymode(src, target)
                self._rebuild(ino, target, f"{rel}/{name}", where, placed, rng, torn, report)
                continue
            os.rename(src, target)
            u = self.unsynced.get(ino)
            if u is not None:
                report["files"][f"{rel}/{name}"] = _restore(target, u, rng if torn else None)


def _backing_flags(flags: int) -> int:
    """The kernel's open flags as the daemon opens the backing file: never truncating or
    appending by itself (the model does both), and readable when writable (copy on write
    reads the old bytes through the same descriptor)."""
    flags &= ~(os.O_TRUNC | os.O_APPEND | os.O_CREAT)
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags


def _restore(path: Path, u: _Unsynced, rng: random.Random | None) -> dict[str, int]:
    """Put a file back to its durable content (plus, if torn, a prefix of its unsynced tail)."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        tail = b""
        if rng is not None and size > u.durable_size:
            keep = rng.randint(0, size - u.durable_size)
            tail = os.pread(fd, keep, u.durable_size)
            if tail and rng.random() < 0.3:  # the size reached the disk, the last data did not
                z = rng.randint(1, min(len(tail), BLOCK))
                tail = tail[:-z] + b"\0" * z
        for b, data in u.undo.items():
            os.pwrite(fd, data, b * BLOCK)
        os.ftruncate(fd, u.durable_size)
        if tail:
            os.pwrite(fd, tail, u.durable_size)
        return {"size": size, "durable_size": u.durable_size, "kept": u.durable_size + len(tail),
                "blocks_restored": len(u.undo)}
    finally:
        os.close(fd)


def _rel(root: Path, p: Path) -> str:
    """`p` as a path in the mount ("/" for the root)."""
    r = p.relative_to(root).as_posix()
    return "/" if r == "." else "/" + r


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ---------------------------------------------------------------------------------------------
# The FUSE daemon


def _ops_class() -> type[Any]:
    import mfusepy

    class PowerCutOps(mfusepy.Operations):  # type: ignore[misc]
        """mfusepy adapter over `DiskModel` (paths in, backing descriptors as handles)."""

        use_ns = True

        def __init__(self, model: DiskModel, ready: threading.Event) -> None:
            self.m = model
            self.ready = ready

        def init(self, path: str) -> None:
            self.ready.set()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self.m.path(path))
            return {
                "st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_ino": st.st_ino,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns, "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *sorted(os.listdir(self.m.path(path)))]

        def access(self, path: str, amode: int) -> int:
            if not os.access(self.m.path(path), amode):
                raise OSError(errno.EACCES, "access denied")
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self.m.root)
            return {k: getattr(sv, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")}

        def chmod(self, path: str, mode: int) -> int:
            self.m.metadata_change()
            os.chmod(self.m.path(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self.m.metadata_change()
            os.chown(self.m.path(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            self.m.metadata_change()
            if times is None:
                os.utime(self.m.path(path))
            else:
                os.utime(self.m.path(path), ns=times)
            return 0

        def create(self, path: str, mode: int, flags: int) -> int:
            return self.m.create(path, mode, flags)

        def open(self, path: str, flags: int) -> int:
            return self.m.open(path, flags)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return self.m.read(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return self.m.write(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self.m.truncate(path, length, fh)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self.m.fsync(fh, bool(datasync))
            return 0

        def release(self, path: str, fh: int) -> int:
            self.m.release(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            self.m.fsyncdir(path)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self.m.mkdir(path, mode)
            return 0

        def unlink(self, path: str) -> int:
            self.m.unlink(path)
            return 0

        def rmdir(self, path: str) -> int:
            self.m.rmdir(path)
            return 0

        def rename(self, old: str, new: str) -> int:
            self.m.rename(old, new)
            return 0

    return PowerCutOps


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _control(model: DiskModel, mountpoint: str) -> None:
    """Commands from the harness, one JSON object a line on stdin; EOF: unmount and exit."""
    for line in sys.stdin:
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "freeze":
                model.freeze()
                _reply({"ok": True})
            elif cmd == "cut":
                _reply({"ok": True, "report": model.cut(bool(req.get("torn")),
                                                          int(req.get("seed", 0)))})
            elif cmd == "status":
                _reply({"ok": True, "status": model.status()})
            else:
                _reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:
            _reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    # the harness is gone: nobody will ever cut or unmount this one
    _fusermount(mountpoint, lazy=True)


def serve(store: Path, mountpoint: Path, *, real_sync: bool = True,
          sync_delay_s: float = 0.0, metadata: str = "strict") -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    model = DiskModel(store, real_sync=real_sync, sync_delay_s=sync_delay_s, metadata=metadata)
    ready = threading.Event()

    def announce() -> None:
        if ready.wait(30):
            _reply({"event": "ready", "pid": os.getpid()})
            _control(model, str(mountpoint))

    threading.Thread(target=announce, name="control", daemon=True).start()
    mfusepy.FUSE(_ops_class()(model, ready), str(mountpoint), foreground=True,
                 fsname="powercut", subtype="powercut", auto_unmount=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="TEST ONLY power-cut FUSE daemon")
    ap.add_argument("--store", required=True, help="backing store (data/ holds the files)")
    ap.add_argument("--mount", required=True, help="mount point (the node's data dir)")
    ap.add_argument("--no-real-sync", action="store_true",
                    help="do not pass fsyncs through to the backing file system")
    ap.add_argument("--sync-delay-ms", type=float, default=0.0,
                    help="every fsync takes this much longer (a slower disk)")
    ap.add_argument("--metadata", choices=METADATA_MODELS, default="strict",
                    help="strict: an entry is durable once its directory is synced; ordered: "
                         "any sync makes every earlier namespace change durable (ext4)")
    ns = ap.parse_args(argv)
    serve(Path(ns.store), Path(ns.mount), real_sync=not ns.no_real_sync,
          sync_delay_s=ns.sync_delay_ms / 1000.0, metadata=ns.metadata)


# ---------------------------------------------------------------------------------------------
# Harness side


def fuse_available() -> str | None:
    """None if FUSE mounts can work here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which(FUSERMOUNT) is None:
        return f"{FUSERMOUNT} is not installed (scripts/test-deps.sh installs fuse3)"
    try:
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy or libfuse3 is missing: {e}"
    return None


def mounts_under(root: Path) -> list[Path]:
    """FUSE mount points at or below `root` (from /proc/self/mountinfo), deepest first."""
    base = os.path.realpath(root)
    out: list[Path] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mnt = parts[4].replace("\\040", " ")
            if parts[sep + 1].startswith("fuse") and (mnt == base or
                                                       mnt.startswith(base + "/")):
                out.append(Path(mnt))
    return sorted(out, key=lambda p: -len(str(p)))


def _fusermount(mountpoint: str | Path, lazy: bool = False) -> bool:
    args = [FUSERMOUNT, "-u", "-q", *(["-z"] if lazy else []), str(mountpoint)]
    return subprocess.run(args, capture_output=True, check=False).returncode == 0


def unmount_stale(root: Path) -> list[Path]:
    """Unmount every FUSE mount at or below `root` (left by a crashed run); returns them."""
    found = mounts_under(root)
    for m in found:
        if not _fusermount(m):
            _fusermount(m, lazy=True)
    return found


class Disk:
    """One power-cut mount: `store/data` (backing) seen through `mountpoint`."""

    def __init__(self, store: Path, mountpoint: Path, *, real_sync: bool = True,
                 sync_delay_ms: float = 0.0, metadata: str = "strict") -> None:
        self.metadata = metadata
        self.store = Path(store)
        self.mountpoint = Path(os.path.realpath(mountpoint))
        self.real_sync = real_sync
        self.sync_delay_ms = sync_delay_ms
        self.proc: subprocess.Popen[str] | None = None
        self.cuts: list[dict[str, Any]] = []

    @property
    def mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mount(self, timeout: float = 15.0) -> None:
        if self.mounted:
            return
        why = fuse_available()
        if why is not None:
            raise RuntimeError(f"power cuts need FUSE: {why}")
        self.store.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.mountpoint in mounts_under(self.mountpoint):
            unmount_stale(self.mountpoint)
        if any(self.mountpoint.iterdir()):
            raise RuntimeError(f"{self.mountpoint} is not empty: it would be hidden by the mount")
        env = dict(os.environ, FUSE_LIBRARY_NAME="fuse3", PYTHONUNBUFFERED="1")
        with open(self.store / "fuse.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "raftreg.testing.powercut", "--store", str(self.store),
                 "--mount", str(self.mountpoint),
                 *([] if self.real_sync else ["--no-real-sync"]),
                 "--sync-delay-ms", str(self.sync_delay_ms), "--metadata", self.metadata],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )
        try:
            msg = self._read(timeout)
            if msg.get("event") != "ready":
                raise RuntimeError(f"power-cut daemon for {self.mountpoint} said {msg}")
        except BaseException:
            self.unmount()
            raise

    def _read(self, timeout: float) -> dict[str, Any]:
        p = self.proc
        assert p is not None and p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if ready else ""
        if not line:
            log = (self.store / "fuse.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"power-cut daemon for {self.mountpoint} did not answer "
                               f"(exit {p.poll()}); log tail:\n{log}")
        d: dict[str, Any] = json.loads(line)
        return d

    def _call(self, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        p = self.proc
        if p is None or p.poll() is not None or p.stdin is None:
            raise RuntimeError(f"{self.mountpoint} is not mounted")
        p.stdin.write(json.dumps(req) + "\n")
        p.stdin.flush()
        resp = self._read(timeout)
        if not resp.get("ok"):
            raise RuntimeError(f"power-cut daemon: {resp.get('error')}")
        return resp

    def status(self) -> dict[str, Any]:
        """What a cut would drop now: unsynced files and directories."""
        st: dict[str, Any] = self._call({"cmd": "status"})["status"]
        return st

    def freeze(self) -> None:
        """The power goes: every later operation fails with EIO, a sync under way never
        completes. Kill whoever uses the files next, then `cut`.

        (Killing first would not do: a process killed in the middle of an fsync that reached
        the daemon waits for its answer before it dies, so the sync would always complete.)"""
        self._call({"cmd": "freeze"})

    def cut(self, *, torn: bool = False, seed: int = 0) -> dict[str, Any]:
        """Drop every unsynced change (freezing first unless `freeze` was called; whoever
        uses the files must be dead by now) and unmount. `mount()` again to use what
        survived."""
        report: dict[str, Any] = self._call({"cmd": "cut", "torn": torn, "seed": seed})["report"]
        self.cuts.append(report)
        self.unmount()
        return report

    def unmount(self, timeout: float = 10.0) -> None:
        """Unmount and stop the daemon (idempotent; also after a failure)."""
        p, self.proc = self.proc, None
        deadline = time.monotonic() + timeout
        while self.mountpoint in mounts_under(self.mountpoint):
            if _fusermount(self.mountpoint):
                break
            if time.monotonic() > deadline:
                _fusermount(self.mountpoint, lazy=True)
                break
            time.sleep(0.05)
        if p is not None:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
            try:
                p.wait(timeout=max(0.5, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        unmount_stale(self.mountpoint)


def cut_power(disks: Disks, kill: Callable[[str], None], names: Sequence[str], *,
              torn: bool = False, seed: int = 0) -> dict[str, Any]:
    """A power cut of the processes `names` and their disks: every disk is frozen first (a sync
    under way never completes), then every process is killed (`kill`: kill -9 and reap), then
    each disk drops what was not synced and is unmounted. Returns what each disk lost."""
    for n in names:
        if disks[n].mounted:
            disks[n].freeze()
    for n in names:
        kill(n)
    return {n: disks[n].cut(torn=torn, seed=seed + i)
            for i, n in enumerate(names) if disks[n].mounted}


class Disks:
    """One `Disk` per name (a cluster's nodes): `<root>/disks/<name>` backs `mountpoint(name)`."""

    def __init__(self, root: Path, mountpoints: dict[str, Path], *, real_sync: bool = True,
                 sync_delay_ms: float = 0.0, metadata: str = "strict") -> None:
        self.root = Path(root)
        self.metadata = metadata
        self.real_sync = real_sync
        self.sync_delay_ms = sync_delay_ms
        self.disks: dict[str, Disk] = {}
        for n, m in mountpoints.items():
            self.add(n, m)

    def add(self, name: str, mountpoint: Path) -> None:
        self.disks[name] = Disk(self.root / "disks" / name, mountpoint,
                                real_sync=self.real_sync, sync_delay_ms=self.sync_delay_ms,
                                metadata=self.metadata)

    def __getitem__(self, name: str) -> Disk:
        return self.disks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.disks)

    def close(self) -> None:
        errors = []
        for d in self.disks.values():
            try:
                d.unmount()
            except Exception as e:  # every mount gets its chance
                errors.append(e)
        if errors:
            raise errors[0]


if __name__ == "__main__":
    main()
