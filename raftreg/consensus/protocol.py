"""The consensus seam: what a registry node needs from whatever replicates its commands.

Contract (`Consensus`, satisfied by `RaftNode` and by `LocalConsensus`):
- `propose(data)` resolves with what `StateMachine.apply_one(data)` returned on this member
  once this member applied it; `NotApplied` if it certainly was not applied, `OutcomeUnknown`
  if it may have been, `ResourceExhausted` if the proposal queue is full.
- `read_barrier()` resolves once this member applied everything committed before the call
  (a plain `Unavailable` when that cannot be proven). It writes nothing.
- `is_leader`, `leader`, `term`, `members`, `status()` are this member's current view.
- The state machine's callbacks may run on a thread that is not the event loop's (PySyncObj's
  tick thread); they must not block.

A node is built before its consensus (the consensus calls back into the node's store), so a
node receives a `ConsensusFactory`: the composition root decides which consensus, the node
hands it its `StateMachine`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from raftreg.consensus.status import RaftStatus


@dataclass(frozen=True, slots=True)
class StateMachine:
    """The replicated state: applies one command, saves and replaces the whole state.
    `freeze()` takes the state now and returns at once what encodes it (as chunks of the
    snapshot's bytes): the encoding may run later, on another thread, while commands go on
    being applied."""

    apply_one: Callable[[bytes], Any]
    freeze: Callable[[], Callable[[], Iterable[bytes]]]
    restore: Callable[[bytes], None]


class Consensus(Protocol):
    async def propose(self, data: bytes) -> Any: ...

    async def read_barrier(self) -> None: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str | None:
        """The leader's raft address, None when this member knows of none."""
        ...

    @property
    def term(self) -> int: ...

    @property
    def members(self) -> list[str]:
        """Raft addresses of the current configuration, sorted."""
        ...

    @property
    def pending_proposals(self) -> int:
        """Proposals queued or in flight."""
        ...

    def status(self) -> RaftStatus: ...

    async def change_membership(self, op: str, peer: str) -> None:
        """`op` "add" or "remove" the member at raft address `peer`; returns once committed."""
        ...

    async def wait_replicated(self, peer: str, index: int, timeout: float) -> bool:
        """On the leader: whether `peer` applied the log up to `index` within `timeout`."""
        ...

    async def transfer_leadership(self, timeout: float, target: str | None = None) -> None:
        """Return once this member no longer leads; `Unavailable` after `timeout`."""
        ...

    def close(self) -> None:
        """Stop; whatever still waits fails with `NotApplied` (proposals) or `Unavailable`."""
        ...


ConsensusFactory = Callable[[StateMachine], Consensus]
