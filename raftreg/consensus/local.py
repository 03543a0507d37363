"""`LocalConsensus`: a one-member "cluster" in this process, the in-memory twin of `RaftNode`.

Contract (the `Consensus` protocol, protocol.py):
- Every proposal is applied to the state machine at once, on the event loop, in call order:
  the log is the sequence of `propose` calls, each one entry. Deterministic: no thread, no
  timer, no I/O, no randomness.
- It leads from the start, in term 1. A test can take that away and give it back:
  `lose_leadership()` (no leader: proposals and read barriers raise `NotApplied`, nothing is
  applied), `gain_leadership()` (a new term, as after an election).
- `fail_next(applied)`: the next proposal raises `OutcomeUnknown` after being applied
  (`applied=True`) or without being applied (`False`): a timeout or leader change after
  proposing, whose outcome the caller cannot know.
- Membership is fixed (changes raise `FailedPrecondition`); `transfer_leadership` has no one
  to hand over to (`Unavailable`). `close()` fails later calls with `NotApplied`.
"""

from __future__ import annotations

from typing import Any

from raftreg.consensus.protocol import StateMachine
from raftreg.consensus.status import RaftStatus
from raftreg.errors import FailedPrecondition, NotApplied, OutcomeUnknown, Unavailable


class LocalConsensus:
    def __init__(self, sm: StateMachine, self_addr: str = "local:0") -> None:
        self._sm = sm
        self.self_addr = self_addr
        self._leading = True
        self._term = 1
        self._applied = 0  # entries applied = the log's length (every entry commits at once)
        self._fail_next: bool | None = None  # None: the next proposal succeeds
        self._closed = False

    # ------------------------------------------------------------------ test hooks

    def lose_leadership(self) -> None:
        self._leading = False

    def gain_leadership(self) -> None:
        if not self._leading:
            self._leading = True
            self._term += 1

    def fail_next(self, *, applied: bool) -> None:
        self._fail_next = applied

    # ------------------------------------------------------------------ Consensus

    def _check(self) -> None:
        if self._closed:
            raise NotApplied("node is shutting down")
        if not self._leading:
            raise NotApplied("no leader (election in progress or no quorum)")

    async def propose(self, data: bytes) -> Any:
        self._check()
        fail, self._fail_next = self._fail_next, None
        if fail is False:
            raise OutcomeUnknown("proposal lost after it was sent (test hook); not applied")
        result = self._sm.apply_one(data)
        self._applied += 1
        if fail:
            raise OutcomeUnknown("leader changed after the proposal (test hook); applied")
        return result

    async def read_barrier(self) -> None:
        self._check()

    @property
    def is_leader(self) -> bool:
        return self._leading and not self._closed

    @property
    def leader(self) -> str | None:
        return self.self_addr if self.is_leader else None

    @property
    def term(self) -> int:
        return self._term

    @property
    def members(self) -> list[str]:
        return [self.self_addr]

    @property
    def pending_proposals(self) -> int:
        return 0

    def status(self) -> RaftStatus:
        return RaftStatus(
            self_addr=self.self_addr,
            leader=self.leader,
            is_leader=self.is_leader,
            term=self._term,
            commit_index=self._applied,
            applied_index=self._applied,
            log_len=self._applied,
            connected=frozenset(),
            has_quorum=self.is_leader,
        )

    async def change_membership(self, op: str, peer: str) -> None:
        raise FailedPrecondition("a local consensus has exactly one member")

    async def wait_replicated(self, peer: str, index: int, timeout: float) -> bool:
        return False

    async def transfer_leadership(self, timeout: float, target: str | None = None) -> None:
        raise Unavailable("no other member to hand the leadership to")

    def close(self) -> None:
        self._closed = True
