"""TEST ONLY: the power-cut durability model, `DiskModel` (no FUSE: plain file operations on
the backing directory `store/data`, which keep track of what a power cut would leave).

Data: a file's unsynced writes and truncations are an `Unsynced` (see `unsynced.py`) until the
file is fsync'ed. Directory entries: the durable `{name: inode}` of each directory, and for
each inode the one durable entry naming it (no hard links). An unlinked (or renamed-over) inode
that a durable entry still names is moved aside into `store/orphans/` instead of deleted, so
that a cut can bring it back. Inodes are the backing file system's inode numbers (renames keep
them). `cut` rebuilds `store/data` to hold exactly the durable state.

The durability rules (strict and ordered metadata) are in the package docstring.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

from raftreg.testing.powercut.unsynced import Unsynced

METADATA_MODELS = ("strict", "ordered")


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
        self.unsynced: dict[int, Unsynced] = {}  # inode -> unsynced data changes
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
        """Before [start, end) of file `ino` changes: its first unsynced change starts its
        `Unsynced` (durable size: the size now); the changed durable blocks are saved."""
        u = self.unsynced.get(ino)
        if u is None:
            u = self.unsynced[ino] = Unsynced(os.fstat(fd).st_size)
        u.save(fd, start, end)

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
            self.unsynced[ino] = Unsynced(0)  # a new file: nothing of it is durable
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
                report["files"][f"{rel}/{name}"] = u.restore(target, rng if torn else None)


def _backing_flags(flags: int) -> int:
    """The kernel's open flags as the daemon opens the backing file: never truncating or
    appending by itself (the model does both), and readable when writable (copy on write
    reads the old bytes through the same descriptor)."""
    flags &= ~(os.O_TRUNC | os.O_APPEND | os.O_CREAT)
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags


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
