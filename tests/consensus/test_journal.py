"""The durable raft log (raftreg/consensus/journal.py): round trip, torn tails, damage,
term/vote, atomic compaction, group commit, fail-stop."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import msgpack
import pytest

from raftreg.consensus import journal as J
from raftreg.consensus.journal import DurableJournal, JournalCorrupt
from raftreg.errors import FailedPrecondition


class Fatal(Exception):
    pass


def raise_fatal(msg: str) -> NoReturn:
    raise Fatal(msg)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[DurableJournal]]:
    """Journals opened by a test, closed (fd only, no sync) at the end."""
    js: list[DurableJournal] = []
    yield js
    for j in js:
        if j._fd >= 0:
            os.close(j._fd)
            j._fd = -1


def open_j(d: Path, js: list[DurableJournal], **kw: object) -> DurableJournal:
    j = DurableJournal(d, on_fatal=raise_fatal, **kw)  # type: ignore[arg-type]
    js.append(j)
    return j


def fill(j: DurableJournal, first: int, last: int, term: int = 1) -> None:
    for i in range(first, last + 1):
        j.add(b"cmd-%d" % i, i, term)


def idxs(j: DurableJournal) -> list[int]:
    return [e[1] for e in j[:]]


def test_round_trip(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 50)
    j.add(b"", 51, 2)
    j.sync()
    j.close()
    k = open_j(tmp_path, opened)
    assert len(k) == 51
    assert k[0] == (b"cmd-1", 1, 1)
    assert k[-1] == (b"", 51, 2)
    assert k[10:12] == [(b"cmd-11", 11, 1), (b"cmd-12", 12, 1)]
    assert k.synced_index == 51


def test_unsynced_adds_are_not_written(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 3)
    j.sync()
    fill(j, 4, 6)  # buffered only: a crash now loses them, and nothing was acknowledged
    assert j.dirty
    k = open_j(tmp_path, opened)
    assert idxs(k) == [1, 2, 3]


def test_torn_tail_is_truncated_with_one_log_line(
    tmp_path: Path, opened: list[DurableJournal], caplog: pytest.LogCaptureFixture
) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 5)
    j.sync()
    good = os.path.getsize(j.path)
    rec = J._encode(b"x" * 100, 6, 1, good)
    with open(j.path, "ab") as f:
        f.write(rec[: len(rec) // 2])  # half a record: the power went mid-write
    caplog.set_level(logging.INFO, logger="raftreg.consensus.journal")
    k = open_j(tmp_path, opened)
    assert idxs(k) == [1, 2, 3, 4, 5]
    assert os.path.getsize(k.path) == good
    lines = [r for r in caplog.records if r.name == "raftreg.consensus.journal"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert f"{len(rec) // 2} bytes" in lines[0].getMessage()
    assert str(k.path) in lines[0].getMessage()
    fill(k, 6, 7)  # appends go on after the cut
    k.sync()
    assert idxs(open_j(tmp_path, opened)) == [1, 2, 3, 4, 5, 6, 7]


def test_torn_batch_with_valid_records_after_the_bad_one_is_a_tail(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    """Pages of one unsynced write may reach the disk in any order: a bad record followed by
    valid records OF THE SAME WRITE is still a torn tail."""
    j = open_j(tmp_path, opened)
    fill(j, 1, 3)
    j.sync()
    start = os.path.getsize(j.path)
    fill(j, 4, 8)
    j.sync()
    data = bytearray(j.path.read_bytes())
    data[start + J._HEAD.size + 2] ^= 0xFF  # damage the first record of the last write
    j.path.write_bytes(bytes(data))
    k = open_j(tmp_path, opened)
    assert idxs(k) == [1, 2, 3]


def test_corrupt_record_in_the_middle_is_refused(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 3)
    j.sync()
    fill(j, 4, 6)  # a later write: proves the damaged bytes had been synced
    j.sync()
    off = j._offsets[1]
    data = bytearray(j.path.read_bytes())
    data[off + J._HEAD.size + 1] ^= 0x01
    j.path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as e:
        DurableJournal(tmp_path, on_fatal=raise_fatal)
    assert str(j.path) in str(e.value)
    assert f"offset {off}" in str(e.value)
    assert isinstance(e.value, FailedPrecondition)  # the node refuses to start, clearly
    assert j.path.read_bytes() == bytes(data)  # nothing truncated


def test_term_and_vote_survive_reopen_as_msgpack(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    j = open_j(tmp_path, opened)
    j.setCurrentTerm(7, "127.0.0.1:7001")
    assert j.dirty  # not durable before the next sync: nothing may be sent before it
    j.sync()
    k = open_j(tmp_path, opened)
    assert (k.getCurrentTerm(), k.getVotedForNodeId()) == (7, "127.0.0.1:7001")
    raw = (tmp_path / J.STATE_NAME).read_bytes()
    assert not raw.startswith(b"\x80")  # never pickle
    assert msgpack.unpackb(raw)["term"] == 7
    k.setCurrentTerm(8, None)
    k.sync()
    m = open_j(tmp_path, opened)
    assert (m.getCurrentTerm(), m.getVotedForNodeId()) == (8, None)


def test_damaged_state_file_is_refused(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    j.setCurrentTerm(3, None)
    j.sync()
    (tmp_path / J.STATE_NAME).write_bytes(b"\x80\x04junk")
    with pytest.raises(JournalCorrupt, match=r"raft\.state"):
        DurableJournal(tmp_path, on_fatal=raise_fatal)


def test_commit_hint_is_clamped_to_the_log(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 5)
    j.setRaftCommitIndex(5)
    j._destroy()  # a clean stop stores the hint
    k = open_j(tmp_path, opened)
    assert k.getRaftCommitIndex() == 5
    k.deleteEntriesFrom(3)
    assert k.getRaftCommitIndex() == 3


def test_compaction_rewrites_atomically(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 10)
    j.sync()
    j.deleteEntriesTo(4)  # keep list positions 4.. = indexes 5..10
    assert idxs(j) == [5, 6, 7, 8, 9, 10]
    fill(j, 11, 12)
    j.sync()
    assert idxs(open_j(tmp_path, opened)) == [5, 6, 7, 8, 9, 10, 11, 12]
    assert not (tmp_path / (J.WAL_NAME + ".tmp")).exists()


class Crash(BaseException):
    pass


def test_crash_between_compaction_steps_keeps_the_old_log(
    tmp_path: Path, opened: list[DurableJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 10)
    j.sync()

    def crash(*a: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", crash)  # the new file is written, never renamed
    with pytest.raises(Crash):
        j.deleteEntriesTo(4)
    monkeypatch.undo()
    tmp = tmp_path / (J.WAL_NAME + ".tmp")
    assert tmp.exists()  # what the crash left
    k = open_j(tmp_path, opened)  # "restart"
    assert idxs(k) == list(range(1, 11))
    assert not tmp.exists()


def test_clear_then_add(tmp_path: Path, opened: list[DurableJournal]) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 10)
    j.sync()
    j.clear()  # a snapshot was installed
    j.add(b"a", 40, 3)
    j.add(b"b", 41, 3)
    j.sync()
    assert open_j(tmp_path, opened)[:] == [(b"a", 40, 3), (b"b", 41, 3)]


def test_truncation_of_synced_and_of_buffered_entries(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    j = open_j(tmp_path, opened)
    fill(j, 1, 6)
    j.sync()
    fill(j, 7, 9)
    j.deleteEntriesFrom(7)  # buffered only: indexes 8, 9 go
    assert idxs(j) == [1, 2, 3, 4, 5, 6, 7]
    j.deleteEntriesFrom(4)  # synced ones too (a conflict above the commit index)
    fill(j, 5, 6, term=2)
    assert j.synced_index <= 4
    j.sync()
    k = open_j(tmp_path, opened)
    assert [(e[1], e[2]) for e in k[:]] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]


def test_truncating_synced_entries_is_synced_before_anything_is_written_at_the_cut(
    tmp_path: Path, opened: list[DurableJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise a power cut could keep the new records and lose the truncation, bringing
    stale records back behind them."""
    j = open_j(tmp_path, opened)
    fill(j, 1, 6)
    j.sync()
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    j.deleteEntriesFrom(3)  # indexes 4..6 go
    assert len(calls) == 1 and not j.dirty
    size = os.path.getsize(j.path)
    fill(j, 4, 5, term=2)  # buffered; the "power" goes before they are synced
    assert os.path.getsize(j.path) == size
    k = open_j(tmp_path, opened)
    assert [(e[1], e[2]) for e in k[:]] == [(1, 1), (2, 1), (3, 1)]


def test_damage_inside_a_rewritten_log_is_refused(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    """A compacted log is written whole and fsynced before it replaces the old one: a bad
    record followed by valid ones in it is damage, not a torn write."""
    j = open_j(tmp_path, opened)
    fill(j, 1, 10)
    j.sync()
    j.deleteEntriesTo(2)  # rewrite: indexes 3..10
    off = j._offsets[3]
    data = bytearray(j.path.read_bytes())
    data[off + J._HEAD.size] ^= 0x10
    j.path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=f"offset {off}"):
        DurableJournal(tmp_path, on_fatal=raise_fatal)


def test_group_commit_one_fdatasync_per_sync(
    tmp_path: Path, opened: list[DurableJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_j(tmp_path, opened)
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    fill(j, 1, 200)
    assert calls == []  # add() never syncs
    j.sync()
    assert len(calls) == 1 and j.fdatasyncs == 1
    j.sync()  # nothing new: no sync
    assert len(calls) == 1
    fill(j, 201, 202)
    j.sync()
    assert len(calls) == 2 and j.fdatasyncs == 2


def test_unsafe_no_sync_skips_every_sync(
    tmp_path: Path, opened: list[DurableJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_j(tmp_path, opened, unsafe_no_sync=lambda: True)
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    monkeypatch.setattr(os, "fsync", calls.append)
    fill(j, 1, 5)
    j.setCurrentTerm(2, None)
    j.sync()
    assert calls == [] and j.fdatasyncs == 0
    assert idxs(open_j(tmp_path, opened)) == [1, 2, 3, 4, 5]  # written, just never synced


def test_failed_fdatasync_is_fail_stop_never_retried(
    tmp_path: Path, opened: list[DurableJournal], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_j(tmp_path, opened)
    calls: list[int] = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    fill(j, 1, 3)
    with pytest.raises(Fatal, match="Input/output error"):
        j.sync()
    assert len(calls) == 1


@pytest.mark.slow  # a process of its own
def test_fatal_exits_the_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import logging, os; logging.basicConfig();"
            "import raftreg.consensus.journal as J;"
            "os.fdatasync = lambda fd: (_ for _ in ()).throw(OSError(5, 'EIO'));"
            f"j = J.DurableJournal({str(tmp_path)!r}); j.add(b'x', 1, 1); j.sync();"
            "print('still running')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 74
    assert "still running" not in p.stdout
    assert "CRITICAL" in p.stderr and "fail-stop" in p.stderr


def test_old_format_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raft.journal").write_bytes(b"\0" * 64)
    with pytest.raises(FailedPrecondition) as e:
        DurableJournal(tmp_path, on_fatal=raise_fatal)
    msg = str(e.value)
    assert "raft.journal" in msg and "snapshot save" in msg and "snapshot restore" in msg


def test_not_a_wal_is_refused(tmp_path: Path) -> None:
    (tmp_path / J.WAL_NAME).write_bytes(b"something else entirely")
    with pytest.raises(JournalCorrupt, match="not a raftreg WAL"):
        DurableJournal(tmp_path, on_fatal=raise_fatal)


def test_a_compaction_interrupted_after_the_dump_is_finished_on_start(
    tmp_path: Path, opened: list[DurableJournal]
) -> None:
    """PySyncObj renames the dump, then compacts the log. After a crash in between, the log
    starts before the dump's two entries; PySyncObj would clear it on start (losing entries 7..10
    here). dump.py finishes the compaction instead."""
    from raftreg.consensus.dump import _resume_compaction

    j = open_j(tmp_path, opened)
    fill(j, 1, 10)
    j.sync()
    dump = tmp_path / "raft.dump"
    dump.write_bytes(msgpack.packb({"entries": [[b"cmd-6", 6, 1], [b"cmd-5", 5, 1]]}))
    _resume_compaction(j, dump)
    assert idxs(j) == [5, 6, 7, 8, 9, 10]
    assert idxs(open_j(tmp_path, opened)) == [5, 6, 7, 8, 9, 10]
    _resume_compaction(j, dump)  # idempotent: the log starts with the dump's entries now
    assert idxs(j) == [5, 6, 7, 8, 9, 10]
    # a dump that does not match the log (e.g. a snapshot from the leader) is left to PySyncObj
    dump.write_bytes(msgpack.packb({"entries": [[b"other", 8, 2], [b"cmd-7", 7, 1]]}))
    _resume_compaction(j, dump)
    assert idxs(j) == [5, 6, 7, 8, 9, 10]
