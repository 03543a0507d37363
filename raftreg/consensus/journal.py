"""raftreg's durable raft log: a checksummed, append-only write-ahead log plus a small state file,
installed under PySyncObj in place of its own journal (see `_Fsm` in fsm.py).

Files in the data dir:

- `raft.wal`: an 8-byte header (`_WAL_MAGIC`, which carries the format) followed by records::

      u32 magic | u32 length | u32 crc | u64 batch | payload[length]

  `payload` is msgpack `[idx, term, command]` (one raft log entry; `command` is PySyncObj's
  opaque bytes). `crc` is zlib.crc32 of the little-endian `length | batch` followed by the
  payload. `batch` is the file offset at which the write carrying this record began: every
  record written by one `sync()` shares it (in a file written whole by a rewrite, fsynced
  before it replaces the old one, each record carries its own offset). The file only grows,
  except when a raft conflict truncates it (`deleteEntriesFrom`: the truncation is fdatasynced
  at once, before anything is written at the cut) and when compaction rewrites it whole
  (`deleteEntriesTo`, `clear`: new file, fsync, rename, fsync of the directory). So the writes
  in a file start at increasing offsets, and only the last one can be unsynced.
- `raft.state`: msgpack `{"format", "term", "vote", "commit"}`, replaced atomically (temp file,
  fsync, rename, fsync of the directory). `commit` is a hint (a commit index known to be
  committed; possibly stale), never trusted beyond the log's end.

Contracts:

- `add()` never syncs and never writes: it encodes the record and buffers it. `sync()` writes
  every buffered record in one write at the end of the file, then one `fdatasync` covers every
  entry appended (or truncated away) since the previous sync: group commit. The state file is
  written by the same `sync()` when term, vote (or, rarely, the commit hint) changed.
  The caller (fsm.py's durable point) calls `sync()` before any message reflecting the new
  entries or the new term/vote leaves the node, and before the leader counts its own entries
  in a commit.
- Recovery on open: records are read in order until the first one that is short, has a bad
  magic, length or checksum. If no valid record written by a LATER write batch follows it, it is
  a torn tail (a write that was not synced when the power went): the file is truncated there
  and one warning says how many bytes were dropped. Because the next batch is only written
  after the previous one was fdatasync'ed, only the last batch can be torn; a valid record from
  a later batch after a bad one means synced data was damaged: the journal refuses to open
  (`JournalCorrupt`, naming the file and offset). Indexes must be consecutive.
- Fail-stop: an I/O error while appending, truncating, syncing or rewriting is never retried
  (after a failed fsync the kernel may have dropped the dirty pages, so a retry that succeeds
  proves nothing): `fatal()` logs CRITICAL and ends the process with `os._exit`. PySyncObj's
  tick thread swallows exceptions, so raising would let the node run on with a log it no
  longer has on disk.
- TEST ONLY: `unsafe_no_sync()` (given only by the test launcher's fault injection) makes
  `sync()` skip every fsync/fdatasync, so that a power-cut test can show it catches a node that
  does not sync.

Entries are kept in memory too (a list of `(command, idx, term)` tuples, as PySyncObj's own
journals do); positions passed to `deleteEntriesFrom/To` are list positions, not log indexes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, overload

import msgpack

from raftreg.errors import FailedPrecondition

log = logging.getLogger("raftreg.consensus.journal")

WAL_NAME = "raft.wal"
STATE_NAME = "raft.state"
OLD_FORMAT_NAMES = ("raft.journal", "raft.journal.meta")  # PySyncObj's FileJournal

_WAL_MAGIC = b"RRWAL\x00\x00\x01"  # format 1
_REC_MAGIC = 0x4C415752  # b"RWAL" little-endian: lets recovery find record starts
_HEAD = struct.Struct("<IIIQ")  # magic, length, crc, batch
_CRC_HEAD = struct.Struct("<IQ")  # length, batch: the header fields the crc covers
_MAX_RECORD = 1 << 30
_STATE_FORMAT = 1
_COMMIT_HINT_EVERY_S = 5  # the commit hint alone is written at most this often

Entry = tuple[bytes, int, int]  # (command, idx, term), PySyncObj's journal entry


class JournalCorrupt(FailedPrecondition):
    """The log on disk is damaged (not just a torn tail): the node refuses to start."""


def fatal(message: str) -> NoReturn:
    """Fail-stop: log CRITICAL and end the process at once (no retry, no cleanup that could
    write more state)."""
    log.critical("%s; stopping the node (fail-stop)", message)
    for h in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # nothing may stop the exit
            h.flush()
    sys.stderr.flush()
    os._exit(74)  # EX_IOERR


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(command: bytes, idx: int, term: int, batch: int) -> bytes:
    payload: bytes = msgpack.packb([idx, term, command])
    head = _CRC_HEAD.pack(len(payload), batch)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _HEAD.pack(_REC_MAGIC, len(payload), crc, batch) + payload


def _decode_at(data: bytes | memoryview, off: int) -> tuple[Entry, int, int] | None:
    """The record at `off` as (entry, batch, next offset), or None if it is not a whole valid
    record."""
    if off + _HEAD.size > len(data):
        return None
    magic, length, crc, batch = _HEAD.unpack_from(data, off)
    end = off + _HEAD.size + length
    if magic != _REC_MAGIC or length > _MAX_RECORD or end > len(data):
        return None
    payload = bytes(data[off + _HEAD.size:end])
    if zlib.crc32(payload, zlib.crc32(_CRC_HEAD.pack(length, batch))) != crc:
        return None
    try:
        idx, term, command = msgpack.unpackb(payload)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (isinstance(idx, int) and isinstance(term, int) and isinstance(command, bytes)):
        return None
    return (command, idx, term), batch, end


def scan_wal(path: Path) -> tuple[list[Entry], list[int], int, int]:
    """Read a WAL: (entries, their offsets, end of the last valid record, file size).
    Raises `JournalCorrupt` for damage that is not a torn tail (see the module contract)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < len(_WAL_MAGIC) or not data.startswith(_WAL_MAGIC):
        if data and not _WAL_MAGIC.startswith(data[: len(_WAL_MAGIC)]):
            raise JournalCorrupt(f"{path}: not a raftreg WAL (format 1) — bad header")
        # An empty or partly written header: the file was being created and never synced.
        return [], [], 0, len(data)
    entries: list[Entry] = []
    offsets: list[int] = []
    off = len(_WAL_MAGIC)
    while off < len(data):
        rec = _decode_at(data, off)
        if rec is None:
            break
        entry, _, nxt = rec
        if entries and entry[1] != entries[-1][1] + 1:
            raise JournalCorrupt(
                f"{path}: record at offset {off} holds index {entry[1]} after index "
                f"{entries[-1][1]} (indexes must be consecutive)")
        entries.append(entry)
        offsets.append(off)
        off = nxt
    if off < len(data):
        # A bad record at `off`. Any valid record written by a later batch proves that the bad
        # bytes had been synced before: damage, not a torn write.
        pos = off + 1
        needle = struct.pack("<I", _REC_MAGIC)
        while True:
            pos = data.find(needle, pos)
            if pos < 0:
                break
            rec = _decode_at(data, pos)
            if rec is not None and rec[1] > off:
                raise JournalCorrupt(
                    f"{path}: corrupt record at offset {off} followed by valid records "
                    f"(e.g. index {rec[0][1]} at offset {pos}); the log was damaged after it "
                    "was synced. Restore this member from a backup or re-add it empty.")
            pos += 1
    return entries, offsets, off, len(data)


class DurableJournal:
    """PySyncObj's journal interface over `raft.wal` + `raft.state` (see the module contract).
    Used by PySyncObj's tick thread only; the counters may be read from any thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        unsafe_no_sync: Callable[[], bool] | None = None,
        on_fatal: Callable[[str], NoReturn] = fatal,
    ) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / WAL_NAME
        self.state_path = self.dir / STATE_NAME
        self._unsafe_no_sync = unsafe_no_sync
        self._fatal = on_fatal
        self.fdatasyncs = 0  # fdatasync calls on the WAL (one per group commit)
        self.fsyncs = 0  # every other fsync: state file, directory, rewrites
        old = [n for n in OLD_FORMAT_NAMES if (self.dir / n).exists()]
        if old:
            raise FailedPrecondition(
                f"{self.dir} holds a raft log in PySyncObj's old format ({', '.join(old)}); "
                "this raftreg keeps it in raft.wal and does not read the old one. Take a "
                "backup with the previous raftreg (`raftreg snapshot save FILE`) and restore "
                "it into new, empty data dirs (`raftreg snapshot restore FILE`).")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state = self._read_state()
        for stale in (self.dir / (WAL_NAME + ".tmp"), self.dir / (STATE_NAME + ".tmp")):
            if stale.exists():  # a rewrite that crashed before its rename: never used
                log.warning("removing %s left by an interrupted rewrite", stale)
                stale.unlink()
        if self.path.exists():
            entries, offsets, end, size = scan_wal(self.path)
        else:
            entries, offsets, end, size = [], [], 0, 0
        self._entries: list[Entry] = entries
        self._offsets: list[int] = offsets
        self._fd = -1
        if end == 0:  # new, or a header that was never synced
            self._fd = self._create(self.path, [])
            self._written = len(_WAL_MAGIC)
            # The data dir may be new too: its own entry must survive a power cut.
            self._fsync_path(self.dir.parent)
        else:
            self._fd = os.open(self.path, os.O_RDWR)
            if end < size:
                log.warning("%s: dropped a torn tail of %d bytes at offset %d (a write that "
                            "was never synced; last entry kept: %s)", self.path, size - end,
                            end, entries[-1][1] if entries else "none")
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
                self.fsyncs += 1
            self._written = end
        self._end = self._written  # logical end: written + buffered
        self._buf: list[bytes] = []
        self._dirty = False  # entries appended or truncated since the last fdatasync
        self._state_dirty = False
        self._commit = int(self._state.get("commit", 1))
        self._ticks = 0
        self.synced_index = entries[-1][1] if entries else 0

    # ------------------------------------------------------------------ files

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return {"format": _STATE_FORMAT, "term": 0, "vote": None, "commit": 1}
        try:
            st = msgpack.unpackb(raw)
            ok = (isinstance(st, dict) and st.get("format") == _STATE_FORMAT
                  and isinstance(st.get("term"), int)
                  and (st.get("vote") is None or isinstance(st.get("vote"), str))
                  and isinstance(st.get("commit"), int))
        except (ValueError, TypeError, msgpack.UnpackException):
            ok = False
        if not ok:
            # Written atomically (rename), so a bad file is damage, not a torn write.
            raise JournalCorrupt(f"{self.state_path}: unreadable raft state (term/vote); "
                                 "restore this member from a backup or re-add it empty")
        return dict(st)

    def _create(self, path: Path, entries: list[Entry]) -> int:
        """Write a complete WAL holding `entries` to `path` and fsync it; returns its fd."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        base = len(_WAL_MAGIC)
        blob = [_WAL_MAGIC]
        offsets = []
        off = base
        for c, i, t in entries:
            rec = _encode(c, i, t, off)  # synced whole: every record is its own "write"
            offsets.append(off)
            blob.append(rec)
            off += len(rec)
        self._pwrite_all(fd, b"".join(blob), 0)
        self._fsync(fd)
        self._offsets = offsets
        self._fsync_dir()
        return fd

    def _pwrite_all(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def _fsync(self, fd: int) -> None:
        if self._unsafe_no_sync is not None and self._unsafe_no_sync():
            return
        os.fsync(fd)
        self.fsyncs += 1

    def _fsync_dir(self) -> None:
        self._fsync_path(self.dir)

    def _fsync_path(self, directory: Path) -> None:
        if self._unsafe_no_sync is not None and self._unsafe_no_sync():
            return
        fsync_dir(directory)
        self.fsyncs += 1

    def _write_state(self) -> None:
        blob = msgpack.packb(self._state)
        tmp = self.dir / (STATE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._pwrite_all(fd, blob, 0)
            self._fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)
        self._fsync_dir()

    def _rewrite(self, keep: list[Entry]) -> None:
        """Replace the WAL by one holding exactly `keep`, atomically: a crash leaves either
        the old file or the new one, both whole."""
        try:
            self.sync()
            # Whatever was renamed into this directory before (PySyncObj's dump) is made
            # durable before the log forgets the entries the dump replaces.
            self._fsync_dir()
            tmp = self.dir / (WAL_NAME + ".tmp")
            fd = self._create(tmp, keep)
            os.replace(tmp, self.path)
            self._fsync_dir()
        except OSError as e:
            self._fatal(f"rewriting {self.path} failed: {e}")
        old, self._fd = self._fd, fd
        os.close(old)
        self._entries = list(keep)
        self._written = self._end = os.fstat(fd).st_size
        self._buf = []
        self._dirty = False
        self.synced_index = keep[-1][1] if keep else 0

    # ------------------------------------------------------------------ ours

    def sync(self) -> None:
        """Make every entry appended or truncated so far, and term/vote, durable (group commit:
        one fdatasync for everything since the previous sync). Fail-stop on any error."""
        try:
            if self._buf:
                data = b"".join(self._buf)
                self._pwrite_all(self._fd, data, self._written)
                self._written += len(data)
                self._buf = []
            if self._dirty:
                if self._unsafe_no_sync is None or not self._unsafe_no_sync():
                    os.fdatasync(self._fd)
                    self.fdatasyncs += 1
                self._dirty = False
                self.synced_index = self._entries[-1][1] if self._entries else 0
            if self._state_dirty:
                self._state["commit"] = self.getRaftCommitIndex()
                self._write_state()
                self._state_dirty = False
        except OSError as e:
            self._fatal(f"syncing the raft log in {self.dir} failed: {e}")

    def fsync_file(self, fd: int, what: str) -> None:
        """fsync a file of the data dir written by someone else (the dump); fail-stop."""
        try:
            self._fsync(fd)
        except OSError as e:
            self._fatal(f"fsync of {what} failed: {e}")

    def fsync_data_dir(self) -> None:
        """fsync the data dir (renames into it become durable); fail-stop."""
        try:
            self._fsync_dir()
        except OSError as e:
            self._fatal(f"fsync of {self.dir} failed: {e}")

    @property
    def state_dirty(self) -> bool:
        """True while a term/vote change is not yet durable."""
        return self._state_dirty

    @property
    def dirty(self) -> bool:
        """True while something is not yet durable (no message may leave then)."""
        return self._dirty or self._state_dirty or bool(self._buf)

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------------ PySyncObj's interface

    def add(self, command: bytes, idx: int, term: int) -> None:
        rec = _encode(command, idx, term, self._written)
        self._buf.append(rec)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(rec)
        self._dirty = True

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop entries from list position `entryFrom` on (a raft conflict: never below the
        commit index, see fsm.py)."""
        if entryFrom >= len(self._entries):
            return
        cut = self._offsets[entryFrom]
        if cut >= self._written:  # only buffered records go
            keep = len(self._entries) - len(self._buf)
            del self._buf[entryFrom - keep:]
            self._dirty = bool(self._buf)  # nothing on disk changed
        else:
            # Synced at once, before anything is written at the cut: otherwise a power cut
            # could keep the new records and lose the truncation, resurrecting stale records
            # behind them (and a torn new write could look like damage to synced data).
            # Conflicts above the commit index are rare (after a leader change).
            self._buf = []
            try:
                os.ftruncate(self._fd, cut)
                if self._unsafe_no_sync is None or not self._unsafe_no_sync():
                    os.fdatasync(self._fd)
                    self.fdatasyncs += 1
            except OSError as e:
                self._fatal(f"truncating {self.path} failed: {e}")
            self._written = cut
            self._dirty = False
        self._end = cut
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        last = self._entries[-1][1] if self._entries else 0
        self.synced_index = min(self.synced_index, last)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Compaction after a dump: keep entries from list position `entryTo` on."""
        if entryTo <= 0:  # nothing to drop: just make the dump's rename durable
            self.sync()
            self.fsync_data_dir()
            return
        self._rewrite(self._entries[entryTo:])

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...
    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._state_dirty = True  # store the latest commit hint on a clean stop
        self.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._commit = raftCommitIndex  # a hint: stored with the next state write

    def getRaftCommitIndex(self) -> int:
        if self._entries:
            return min(self._commit, self._entries[-1][1])
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self._state["term"] = int(term)
        self._state["vote"] = None if votedForNodeId is None else str(votedForNodeId)
        self._state_dirty = True  # durable at the next sync, before any message leaves

    def getCurrentTerm(self) -> int:
        return int(self._state["term"])

    def getVotedForNodeId(self) -> str | None:
        vote = self._state["vote"]
        return None if vote is None else str(vote)

    def onOneSecondTimer(self) -> None:
        self._ticks += 1
        if self._ticks % _COMMIT_HINT_EVERY_S == 0 and self._commit != self._state["commit"]:
            self._state_dirty = True
