"""The follower's AppendEntries (fsm.py `_Fsm._append_entries`), fed messages directly:
PySyncObj 0.3.17 deleted every entry after prevLogIdx on any overlap (committed and applied
ones too); ours keeps matching entries and cuts only at a real conflict above the commit."""

from __future__ import annotations

import logging

import pytest

from tests.consensus.follower_harness import Follower, term1_log


def test_stale_or_repeated_append_deletes_nothing(
    f: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    term1_log(f)
    before = f.log()
    ack = f.ae(5, 1, [(6, 1)], 7, 1)  # a repeated send of entry 6
    assert f.log() == before
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 7
    ack = f.ae(5, 1, [], 7, 1)  # a stale heartbeat
    assert f.log() == before and (f.commit, f.applied) == (7, 7)
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 6
    ack = f.ae(3, 1, [(4, 1), (5, 1), (6, 1)], 7, 1)  # overlap inside the log
    assert f.log() == before and ack is not None and ack["next_node_idx"] == 7
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_conflict_above_the_commit_is_cut_there_only(f: Follower) -> None:
    term1_log(f)
    # A term-2 leader whose log ends at 7 (term 1): its no-op at 8 replaces our uncommitted 8.
    ack = f.ae(7, 1, [(8, 2)], 7, 2, node=f.other)
    assert f.log() == [(1, 0)] + [(i, 1) for i in range(2, 8)] + [(8, 2)]
    assert ack is not None and ack["success"] and ack["next_node_idx"] == 9
    # ...then more entries after a matching overlap
    ack = f.ae(6, 1, [(7, 1), (8, 2), (9, 2)], 8, 2, node=f.other)
    assert f.log()[-2:] == [(8, 2), (9, 2)]
    assert ack is not None and ack["next_node_idx"] == 10 and f.commit == 8


def test_conflict_with_a_committed_entry_is_refused(
    f: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    term1_log(f)
    before = f.log()
    ack = f.ae(5, 1, [(6, 2)], 7, 2, node=f.other)  # would replace committed, applied 6
    assert ack is None  # not acknowledged
    assert f.log() == before and (f.commit, f.applied) == (7, 7)
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(crit) == 1 and "committed entry 6" in crit[0].getMessage()


def test_commit_never_covers_an_unverified_tail(f: Follower) -> None:
    term1_log(f)
    f.ae(7, 1, [(8, 2)], 7, 2, node=f.other)  # our 8 (term 1) replaced
    f.ae(8, 2, [], 8, 2, node=f.other)
    assert f.commit == 8
    # a heartbeat that only proves the log up to 5 moves nothing, whatever the leader's commit
    f.ae(5, 1, [], 20, 2, node=f.other)
    assert f.commit == 8


def test_missing_or_mismatching_prev_is_refused_with_a_reset(f: Follower) -> None:
    term1_log(f)
    ack = f.ae(12, 1, [(13, 1)], 7, 1)  # beyond our end
    assert ack is not None and not ack["success"] and ack["reset"]
    assert ack["next_node_idx"] == 9
    ack = f.ae(8, 3, [(9, 3)], 7, 3, node=f.other)  # our 8 has term 1, not 3
    assert ack is not None and not ack["success"] and ack["next_node_idx"] == 8
    assert f.log()[-1] == (8, 1)


def test_stale_term_is_ignored(f: Follower) -> None:
    term1_log(f)
    f.ae(8, 1, [(9, 2)], 8, 2, node=f.other)
    assert f.ae(5, 1, [(6, 1)], 7, 1) is None  # the deposed leader's old term
    assert f.log()[-1] == (9, 2)
