"""ReadIndex: linearizable reads without a log entry (Raft thesis §6.4; etcd's `read_only.go`).

A read is served at a *read index* R once the serving node has applied R:
- On the leader, R is its commit index when the read arrives, taken only after the leader has
  committed an entry of its own term (its election no-op), so R covers every write
  acknowledged before the read. The leader then proves it was still the leader at that moment:
  every append_entries it sends carries the newest round number (`read_seq`), a follower echoes
  it in its answer, and a round is confirmed once a majority of voters (the leader included) has
  echoed that round or a later one. A deposed leader gets no echo from a majority (they have
  moved to a higher term and ignore it), so it never confirms, and it fails its rounds when it
  steps down.
- A follower asks the leader for R (`read_index` / `read_index_resp` peer messages) and serves
  once it has applied R itself.

Reads that arrive together share one round; rounds overlap freely (an echo of round s confirms
every round up to s). The leader sends a heartbeat at once for a round only when no earlier
round is waiting for its echoes; when one is confirmed and later rounds wait, the next tick's
heartbeat carries them all. Under load, rounds batch up the way proposals do.

`ReadIndex` is the bookkeeping only: no clock, no I/O, no threads. The raft node (`fsm.py`)
feeds it on PySyncObj's tick thread with what it observed and calls back the readers it
returns. A reader's callback takes `None` (served: the node has applied R) or an error text.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

ReadDone = Callable[[str | None], None]


@dataclass
class _Round:
    seq: int
    index: int
    term: int
    readers: list[ReadDone]


@dataclass
class _Forward:
    leader: Hashable
    started: float
    readers: list[ReadDone]


@dataclass
class ReadIndex:
    """Read rounds of one raft member. All methods are called on one thread (the tick thread).

    Invariant: a reader is called back exactly once; with `None` only when the round that
    carries it was confirmed by a majority in the term it was started in, and this member has
    applied the round's index.
    """

    seq: int = 0  # the newest round started; stamped on every outgoing append_entries
    _echo: dict[Hashable, int] = field(default_factory=dict)  # voter -> newest seq echoed
    _rounds: list[_Round] = field(default_factory=list)  # started, not yet confirmed
    _applying: list[tuple[int, list[ReadDone]]] = field(default_factory=list)
    _forwards: dict[int, _Forward] = field(default_factory=dict)  # follower: id -> forward
    _next_forward: int = 0

    # ------------------------------------------------------------------ leader

    def start(self, index: int, term: int, readers: list[ReadDone]) -> int:
        """A round for `readers` at read index `index` (the leader's commit index, taken
        after it committed an entry of `term`); returns the number to stamp on heartbeats."""
        self.seq += 1
        self._rounds.append(_Round(self.seq, index, term, readers))
        return self.seq

    def echoed(self, voter: Hashable, seq: int) -> None:
        """`voter` answered an append_entries stamped with `seq` (in this leader's term)."""
        if seq > self._echo.get(voter, 0):
            self._echo[voter] = seq

    def confirm(self, voters: Iterable[Hashable], term: int) -> list[tuple[ReadDone, str]]:
        """Move every round that a majority of the voting members (this leader plus
        `voters`, the others) has echoed to the applying stage; rounds started in another
        term than `term` (this leader's current one) fail."""
        others = list(voters)
        need = (len(others) + 1) // 2  # echoes a majority needs besides the leader's own
        echoes = sorted((self._echo.get(v, 0) for v in others), reverse=True)
        confirmed_seq = echoes[need - 1] if need > 0 else self.seq
        kept: list[_Round] = []
        failed: list[tuple[ReadDone, str]] = []
        for r in self._rounds:
            if r.term != term:
                failed.extend((cb, "the leader's term changed before the read was confirmed")
                              for cb in r.readers)
            elif r.seq <= confirmed_seq:
                self._applying.append((r.index, r.readers))
            else:
                kept.append(r)
        self._rounds = kept
        return failed

    def step_down(self, why: str) -> list[tuple[ReadDone, str]]:
        """Leadership (or its term) was lost: every unconfirmed round fails."""
        failed = [(cb, why) for r in self._rounds for cb in r.readers]
        self._rounds = []
        self._echo.clear()
        return failed

    @property
    def unconfirmed(self) -> int:
        """Rounds waiting for their echoes."""
        return len(self._rounds)

    @property
    def busy(self) -> bool:
        """Some reader waits (for a quorum, a leader's answer or the apply)."""
        return bool(self._rounds or self._applying or self._forwards)

    # ------------------------------------------------------------------ follower

    def forward(self, leader: Hashable, now: float, readers: list[ReadDone]) -> int:
        """`readers` wait for the leader's read index; returns the request id to send."""
        self._next_forward += 1
        self._forwards[self._next_forward] = _Forward(leader, now, readers)
        return self._next_forward

    def answered(self, request_id: int, index: int | None, error: str | None) -> list[
        tuple[ReadDone, str]
    ]:
        """The leader's answer to a forward: a read index to apply up to, or an error."""
        fwd = self._forwards.pop(request_id, None)
        if fwd is None:
            return []  # expired or from before a leader change: nobody waits for it
        if index is None:
            return [(cb, error or "the leader refused the read") for cb in fwd.readers]
        self._applying.append((index, fwd.readers))
        return []

    def expire_forwards(
        self, leader: Hashable | None, now: float, max_age: float
    ) -> list[tuple[ReadDone, str]]:
        """Fail forwards sent to a member that is no longer the leader, or unanswered for
        longer than `max_age` (an answer lost with a connection)."""
        failed: list[tuple[ReadDone, str]] = []
        for rid, fwd in list(self._forwards.items()):
            if fwd.leader != leader:
                why = "the leader changed before it answered the read"
            elif now - fwd.started > max_age:
                why = f"the leader did not answer the read within {max_age:g}s"
            else:
                continue
            del self._forwards[rid]
            failed.extend((cb, why) for cb in fwd.readers)
        return failed

    # ------------------------------------------------------------------ both

    def applied(self, last_applied: int) -> list[ReadDone]:
        """Readers whose read index this member has now applied (to be called back with
        None)."""
        ready: list[ReadDone] = []
        kept: list[tuple[int, list[ReadDone]]] = []
        for index, readers in self._applying:
            if index <= last_applied:
                ready.extend(readers)
            else:
                kept.append((index, readers))
        self._applying = kept
        return ready

    def fail_all(self, why: str) -> list[tuple[ReadDone, str]]:
        """Shutdown: every reader, in any stage, fails."""
        failed = self.step_down(why)
        failed.extend((cb, why) for _, readers in self._applying for cb in readers)
        failed.extend((cb, why) for f in self._forwards.values() for cb in f.readers)
        self._applying = []
        self._forwards = {}
        return failed
