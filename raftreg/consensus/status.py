"""`RaftStatus`: one member's view of its consensus group, as every `Consensus` reports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftStatus:
    self_addr: str
    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    applied_index: int
    log_len: int
    connected: frozenset[str]
    has_quorum: bool
    fdatasyncs: int = 0  # WAL group commits (fdatasync calls) since start
    fsyncs: int = 0  # every other fsync: term/vote state, directory, compaction, dump
