"""The raft dump file (`raft.dump` in a node's data dir): its msgpack format, writing it off the
tick thread (`DumpWriter`), seeding an empty data dir with a store snapshot (`seed_data_dir`),
and finishing a log compaction a crash interrupted (`_resume_compaction`).

A dump is a msgpack map {magic, format, state (the store snapshot), entries (the last two log
entries it covers, newest first), cluster (the members' raft addresses)}; nothing in it reaches
pickle. `RaftNode`'s serializer hooks start writing it (`DumpWriter`) and read it on PySyncObj's
tick thread (`unpack_dump`); `seed_data_dir` and `_resume_compaction` run before the node
starts, with no tick thread yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj.config import SERIALIZER_STATE

from raftreg.consensus.journal import DurableJournal, fsync_dir
from raftreg.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("raftreg.consensus")

_DUMP_FORMAT = 2  # 2: entries hold msgpack commands (1: pickled, PySyncObj's journal)
_DUMP_MAGIC = "raftreg-raft-dump"
_NO_OP = b"\x01"  # PySyncObj's _COMMAND_TYPE.NO_OP entry


def pack_dump(state: bytes, last_entry: Sequence[Any], prev_entry: Sequence[Any],
              cluster: Sequence[str]) -> bytes:
    """A dump's bytes: `state` plus the two log entries it covers and the members."""
    head, tail = _dump_frame(len(state), last_entry, prev_entry, cluster)
    return head + state + tail


def _dump_frame(state_len: int, last_entry: Sequence[Any], prev_entry: Sequence[Any],
                cluster: Sequence[str]) -> tuple[bytes, bytes]:
    """(head, tail): a dump is head + state + tail, the msgpack map {magic, format, state,
    entries, cluster}; written around a state that is never copied into one buffer."""
    p = msgpack.Packer(use_bin_type=True)
    head = b"".join([p.pack_map_header(5), p.pack("magic"), p.pack(_DUMP_MAGIC),
                     p.pack("format"), p.pack(_DUMP_FORMAT), p.pack("state"),
                     _bin_header(state_len)])
    tail = b"".join([p.pack("entries"), p.pack([list(last_entry), list(prev_entry)]),
                     p.pack("cluster"), p.pack(sorted(cluster))])
    return head, tail


_DONE = threading.Thread()  # stands for a dump thread that never started (see `start`)

# A node's dump thread sleeps this much per CPU second it encodes (`_blocks`): at most half a
# core, so on a small machine three members writing a large dump at once leave CPU for requests.
DUMP_REST = 1.0


def _bin_header(n: int) -> bytes:
    """msgpack's header of an n-byte bin (the smallest form, as `packb` writes it)."""
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    if n < 1 << 16:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


def _blocks(chunks: Iterable[bytes], size: int = 1 << 20, *,
            rest: float = 0.0) -> list[bytes]:
    """`chunks` joined into blocks of about `size` bytes as they come: millions of small
    chunks alive at once would leave the allocator's small-object arenas fragmented (RSS that
    stays up after the dump), blocks are large allocations handed back when freed. After each
    block the thread sleeps `rest` x the CPU time it spent on it (as etcd's compaction sleeps
    between batches): a dump then uses at most 1 / (1 + rest) of a core, and leaves the rest
    of the interpreter and the machine to the node's requests."""
    blocks: list[bytes] = []
    pending: list[bytes] = []
    n = 0
    cpu = time.thread_time()
    for chunk in chunks:
        pending.append(chunk)
        n += len(chunk)
        if n >= size:
            blocks.append(b"".join(pending))
            pending.clear()
            n = 0
            if rest:
                now = time.thread_time()
                time.sleep(rest * (now - cpu))
                cpu = time.thread_time()
    if pending:
        blocks.append(b"".join(pending))
    return blocks


class DumpWriter:
    """Writes raft dumps on a thread of its own, so that the tick thread (heartbeats, elections,
    applies) never waits for a large store to be encoded and written.

    Contract (PySyncObj's custom serializer with a `serializeChecker`; every method but the
    writing runs on the tick thread):
    - `start(encode, ...)`: `encode` was taken on the tick thread (a frozen view of the state
      at the dump's last entry); the thread encodes it, in chunks, and writes and fsyncs
      `raft.dump.next`. No step holds the interpreter for long (see `pack_chunks`).
    - `check()` is the serializeChecker: SERIALIZING while the thread runs; then, on the tick
      thread, renames the new dump over `raft.dump` and answers SUCCESS, after which PySyncObj
      compacts the log (the journal fsyncs the directory first, making the rename durable).
    - `installed()`: a dump received from the leader replaced `raft.dump` meanwhile; the one
      being written is older, so `check()` drops it and answers FAILED (PySyncObj tries again
      later). Renames happen only on the tick thread, so they never race an installed dump.
    - A crash mid-write leaves at most a stale `raft.dump.next`, removed on the next start;
      `raft.dump` is always a complete, fsynced dump.
    """

    def __init__(self, path: Path, fsync_file: Callable[[int, str], None], *,
                 rest: float = 0.0) -> None:
        self._path = path
        self._rest = rest  # see `_blocks`
        self._next = path.with_name(path.name + ".next")
        self._fsync_file = fsync_file
        self._job: threading.Thread | None = None
        self._failed = False
        self._installs = 0  # dumps received from the leader
        self._installs_at_start = 0
        with contextlib.suppress(FileNotFoundError):
            self._next.unlink()

    @property
    def writing(self) -> bool:
        return self._job is not None

    def start(self, freeze: Callable[[], Callable[[], Iterable[bytes]]],
              last_entry: Sequence[Any], prev_entry: Sequence[Any],
              cluster: Sequence[str]) -> None:
        """Take the state (`freeze()`, here) and write it on the dump thread. Never raises: a
        dump that cannot start is reported FAILED by the next `check()` (PySyncObj would
        otherwise wait for it forever, sending no dump to any follower)."""
        assert self._job is None, "one dump at a time"
        self._failed = False
        self._installs_at_start = self._installs
        try:
            encode = freeze()
            self._job = threading.Thread(target=self._write, name="raft-dump", daemon=True,
                                         args=(encode, last_entry, prev_entry, cluster))
            self._job.start()
        except Exception:
            log.exception("starting a raft dump failed")
            self._failed = True
            self._job = _DONE

    def _write(self, encode: Callable[[], Iterable[bytes]], last_entry: Sequence[Any],
               prev_entry: Sequence[Any], cluster: Sequence[str]) -> None:
        try:
            state = _blocks(encode(), rest=self._rest)
            head, tail = _dump_frame(sum(map(len, state)), last_entry, prev_entry, cluster)
            with open(self._next, "wb") as f:
                f.write(head)
                f.writelines(state)
                f.write(tail)
                f.flush()
                self._fsync_file(f.fileno(), str(self._next))
        except Exception:
            log.exception("writing the raft dump failed")
            self._failed = True

    def check(self) -> int:
        job = self._job
        if job is None:
            return SERIALIZER_STATE.NOT_SERIALIZING  # type: ignore[no-any-return]
        if job is not _DONE and job.is_alive():
            return SERIALIZER_STATE.SERIALIZING  # type: ignore[no-any-return]
        self._job = None
        if self._failed or self._installs != self._installs_at_start:
            with contextlib.suppress(FileNotFoundError):
                self._next.unlink()
            return SERIALIZER_STATE.FAILED  # type: ignore[no-any-return]
        os.replace(self._next, self._path)
        return SERIALIZER_STATE.SUCCESS  # type: ignore[no-any-return]

    def installed(self) -> None:
        self._installs += 1

    def close(self, timeout: float) -> None:
        """Wait (up to `timeout`) for a dump being written; it is not renamed any more."""
        job = self._job
        if job is not None and job is not _DONE:
            job.join(timeout)


def unpack_dump(d: Any, filename: str) -> tuple[bytes, tuple[Any, ...], tuple[Any, ...], list[str]]:
    """(state, last entry, previous entry, members) of an unpacked dump; `InvalidArgument` if
    it is not a raftreg dump of this format."""
    if not isinstance(d, dict) or d.get("magic") != _DUMP_MAGIC:
        raise InvalidArgument(f"{filename} is not a raftreg raft dump")
    if d.get("format") != _DUMP_FORMAT:
        raise InvalidArgument(
            f"{filename}: unsupported dump format {d.get('format')} (written by another "
            "raftreg version; restore this member from a backup: `raftreg snapshot "
            "restore`)")
    last_entry, prev_entry = (tuple(e) for e in d["entries"])
    return d["state"], last_entry, prev_entry, list(d["cluster"])


def seed_data_dir(data_dir: Path, state: bytes, members: Sequence[str]) -> None:
    """Prepare an EMPTY data dir so that the node starts from `state` (a store snapshot): a
    raft dump whose log holds two no-op entries (index 2 and 3, term 0) marked applied. Every
    member of the new cluster must be seeded with the same state, so their logs agree; new
    entries then start at index 4. The log must not start at index 1: a member that joins
    later (or loses its data dir) starts with PySyncObj's own no-op at index 1, and the leader
    sends the snapshot only to a follower behind its first log entry — from index 1 it would
    send entries and never the restored state."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    existing = [p.name for p in data_dir.iterdir() if p.name.startswith("raft.")]
    if existing:
        raise FailedPrecondition(
            f"{data_dir} already holds raft data ({', '.join(sorted(existing))}); "
            "restore only into a new, empty data dir"
        )
    blob = pack_dump(state, [_NO_OP, 3, 0], [_NO_OP, 2, 0], members)
    tmp = data_dir / "raft.dump.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(data_dir / "raft.dump")
    fsync_dir(data_dir)
    fsync_dir(data_dir.parent)


def _resume_compaction(journal: DurableJournal, dump: Path) -> None:
    """Finish a compaction a crash interrupted. PySyncObj writes the dump, renames it, then
    compacts the log; a crash in between leaves a log that starts BEFORE the dump's two entries.
    On start PySyncObj accepts only a log that starts exactly with them and otherwise clears
    it, which would drop every entry after the dump (acknowledged ones too): drop just the
    entries the dump covers instead."""
    if not dump.exists() or len(journal) < 2:
        return
    try:
        d = msgpack.unpackb(dump.read_bytes())
        last, prev = (tuple(e) for e in d["entries"])
    except Exception:  # PySyncObj's dump load reports a bad dump
        return
    pos = prev[1] - journal[0][1]
    if pos > 0 and pos + 1 < len(journal) and journal[pos] == prev and journal[pos + 1] == last:
        log.warning("finishing a log compaction a crash interrupted: dropping entries %d..%d "
                    "(in the dump)", journal[0][1], prev[1] - 1)
        journal.deleteEntriesTo(pos)

