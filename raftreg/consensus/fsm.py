"""The PySyncObj side of a raft node: `_Fsm`, the `SyncObj` subclass, and the journal slot
that installs raftreg's `DurableJournal` under it.

Threads: everything here runs on PySyncObj's tick thread (`_onTick`, the message handlers,
`apply_one` through `CommandsMixin`, the leader hooks), except `__init__`, which runs on the
thread that builds the `RaftNode`. The event loop side (raft.py) touches an `_Fsm` only by
calling PySyncObj's thread-safe entry points (`propose_group`, `addNodeToCluster`, ...), by
setting `_transfer` (a leadership transfer the next tick sends), and by plain attribute reads.

The sync rule (docs/design.md "Raft log and the sync rule"): no raft message that acknowledges
anything (an append ack, a vote) leaves before the journal state it reflects is on stable
storage — the transport holds messages in an outbox released only after `durable_point()` —
and the leader syncs its own entries before it counts itself in a commit (its AppendEntries may
leave first, so followers write in parallel with it). Follower appends are Raft's
(`_Fsm._append_entries`), not PySyncObj's, which truncated applied entries.

Linearizable reads (`request_read`) are ReadIndex rounds (read_index.py): the leader stamps the
newest round on every append_entries it sends (`read_seq`), followers echo it in their answer,
and a follower asks the leader for a read index with the `read_index` / `read_index_resp`
messages. Readers are taken in at the start of a tick and settled at its end, after the poll.

`FaultInjection` (TEST ONLY) is the hook a test launcher passes to `RaftNode(faults=...)`: the
peer transport class to run and the deliberately broken modes; production passes none.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.monotonic import monotonic as raft_clock  # PySyncObj's deadlines use this clock

from raftreg.consensus.commands import CommandsMixin
from raftreg.consensus.journal import DurableJournal
from raftreg.consensus.peer import PeerTransport
from raftreg.consensus.read_index import ReadDone, ReadIndex

log = logging.getLogger("raftreg.consensus")

ApplyFn = Callable[[bytes], Any]


class FaultInjection(Protocol):
    """TEST ONLY hooks into one node, read on the tick thread (transport, journal) and the
    event loop (read barrier); production passes none."""

    def transport(self) -> type[PeerTransport]:
        """The peer transport class to run (a `PeerTransport` that drops or delays)."""
        ...

    @property
    def unsafe_local_reads(self) -> bool:
        """DELIBERATELY BROKEN: read barriers return at once (stale reads possible)."""
        ...

    @property
    def unsafe_no_sync(self) -> bool:
        """DELIBERATELY BROKEN: the journal skips every fsync (acknowledged writes lost)."""
        ...


class _JournalSlot:
    """Installs our journal under PySyncObj without forking it: `SyncObj.__init__` stores
    `createJournal(conf.journalFile)` (a MemoryJournal, journalFile=None) in its private
    `__raftLog`; this set-only descriptor stores the node's `DurableJournal` instead. It has no
    `__get__`, so every read of `__raftLog` goes straight to the instance dict."""

    def __set__(self, obj: _Fsm, value: Any) -> None:
        obj.__dict__["_SyncObj__raftLog"] = obj._journal


class _Fsm(CommandsMixin, SyncObj):  # type: ignore[misc]
    """The replicated object: applies groups of commands (`CommandsMixin`: log entries are
    msgpack, never pickle; proposals go in with `propose_group`).

    Durability (see the module docstring): every message PySyncObj sends waits in the
    transport's outbox; `durable_point()` (the journal's group commit) runs before the outbox
    is flushed, and the journal is synced again right after — just before the poll (a tick
    callback registered after the transport's) and after it (end of `_onTick`) — and when this
    node becomes leader."""

    _SyncObj__raftLog = _JournalSlot()
    _SyncObj__raftCommitIndex: int  # PySyncObj's (annotation only, for the type checker)
    _SyncObj__raftLeader: Any  # PySyncObj's (annotation only)
    _SyncObj__raftCurrentTerm: int  # PySyncObj's (annotation only)
    _SyncObj__raftLastApplied: int  # PySyncObj's (annotation only)

    def __init__(
        self,
        self_addr: str,
        peers: list[str],
        conf: SyncObjConf,
        apply_one: ApplyFn,
        faults: FaultInjection | None = None,
        *,
        journal: DurableJournal,
        secret: str,
        join: bool = False,
    ) -> None:
        self._apply_one = apply_one
        self._peer_secret = secret  # read by PeerTransport.__init__ (peer handshake keys)
        self._faults = faults
        self._journal = journal
        self._joining = join
        self._join_hold = conf.raftMaxTimeout
        self._transfer: tuple[str | None, Callable[[Any, int], None]] | None = None
        self._leading_since_release = False  # see durable_point
        self._reads = ReadIndex()
        self._read_requests: deque[ReadDone] = deque()  # from any thread, taken each tick
        self._reads_held: list[ReadDone] = []  # leader: until an entry of its term commits
        self._echo_seq: int | None = None  # read_seq of the append_entries being answered
        self._forward_max_age = max(2 * conf.raftMaxTimeout, 1.0)
        transport = PeerTransport if faults is None else faults.transport()
        super().__init__(self_addr, peers, conf, transportClass=transport)
        # Durable point 1, right before the poll: what the tick body produced (AEs carrying
        # new entries, vote requests, forwarded commands) leaves after the sync.
        self.addOnTickCallback(self._release)

    def durable_point(self) -> None:  # tick thread; the transport's `before_send`
        """Called before held messages are released: makes every appended entry and
        term/vote durable (one fdatasync for all entries since the last sync), fail-stop on
        I/O errors.

        One exception, as in etcd (Raft thesis §10.2.1): a leader that has been leader since
        the previous release, in the same term, with term/vote already durable, only sends
        AppendEntries of its own log (and answers to forwarded commands); none of them
        acknowledges anything, so they may leave before its own entries are synced — the
        followers then write in parallel with the leader instead of after it. The leader's
        sync follows right after the release (`_release`), before its next commit
        computation, so it still counts itself only for synced entries."""
        if self._leading_since_release and self._isLeader() and not self._journal.state_dirty:
            return
        self._journal.sync()

    def _release(self) -> None:  # tick thread
        self._SyncObj__transport.flush_outbox()  # calls durable_point() if anything is held
        self._journal.sync()  # the leader's own entries; a single node's, with nothing to send
        self._leading_since_release = bool(self._isLeader())

    def _SyncObj__onBecomeLeader(self) -> None:  # tick thread
        """PySyncObj counts the leader in every commit (`count = 1`) without a notion of
        "synced". Its no-op appended here can be committed in the same tick (a single-node
        election becomes leader and computes the commit index right after), so sync it now;
        every other leader append is synced at a durable point before the next tick's commit
        computation."""
        super()._SyncObj__onBecomeLeader()
        self._journal.sync()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # tick thread
        """A dump received from the leader counts as hearing from it once it is installed.
        PySyncObj restarts the election timer when the message arrives, before the install;
        restoring a large store takes seconds (~8 s at 1,000,000 keys), so the follower
        started an election right after it, deposing a healthy leader (PySyncObj has no
        pre-vote). Harmless at start-up, where the timer starts now anyway."""
        super()._SyncObj__loadDumpFile(clearJournal)
        self._SyncObj__raftElectionDeadline = (
            raft_clock() + self._SyncObj__generateRaftTimeout())

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:  # tick thread
        """Forget the leader when its connection drops. PySyncObj forwards a follower's
        proposal to the leader and waits for the answer until the leader changes; a forward
        (or its answer) lost with the connection would wait forever, and with it every later
        proposal of this node (`max_inflight`). With no leader, proposals fail at once as
        "no leader" (certainly not applied), and the leader's next append_entries counts as a
        leader change, which fails the waiting forwards as "outcome unknown"."""
        super()._SyncObj__onNodeDisconnected(node)
        if node == self._SyncObj__raftLeader and not self._isLeader():
            self._SyncObj__raftLeader = None

    def _SyncObj__changeCluster(self, request: Any) -> bool:  # tick thread, leader
        """PySyncObj 0.3.17 checks `__changeClusterIDx` ("a change is not committed yet")
        but never sets it; set it to the index the accepted change is appended at, so a
        second change is refused until the first one is applied."""
        accepted = bool(super()._SyncObj__changeCluster(request))
        if accepted:
            self._SyncObj__changeClusterIDx = self._SyncObj__getCurrentLogIndex() + 1
        return accepted

    # ------------------------------------------------------------------ linearizable reads

    def request_read(self, done: ReadDone) -> None:  # any thread
        """`done(None)` once this member has applied a read index of a confirmed round (local
        reads are then linearizable), or `done(error text)`; called on the tick thread."""
        self._read_requests.append(done)
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:  # wake the poll; otherwise the next tick (autoTickPeriod) takes it
            with contextlib.suppress(BlockingIOError):  # a full pipe: a wake-up is pending
                notifier.notify()

    def stamp_outgoing(self, message: dict[str, Any]) -> None:  # tick thread; PeerTransport.send
        """Every append_entries of the log carries the newest read round."""
        if self._reads.seq and message["type"] == "append_entries" and "prevLogIdx" in message:
            message["read_seq"] = self._reads.seq

    def _term_committed(self) -> bool:
        """The leader has committed an entry of its own term (its election no-op), so its
        commit index covers everything any earlier leader committed."""
        noop = self._SyncObj__noopIDx
        return noop is not None and self._SyncObj__raftCommitIndex >= noop

    def _take_reads(self) -> None:  # tick thread, start of a tick
        if not self._read_requests and not self._reads_held:
            return
        readers, self._reads_held = self._reads_held, []
        while self._read_requests:
            readers.append(self._read_requests.popleft())
        if self._isLeader():
            if not self._term_committed():
                self._reads_held = readers
                return
            first = not self._reads.unconfirmed
            self._reads.start(self._SyncObj__raftCommitIndex, self._SyncObj__raftCurrentTerm,
                              readers)
            if first:  # else the heartbeat after the earlier round's confirmation carries it
                self._SyncObj__newAppendEntriesTime = 0.0  # this tick's heartbeat carries it
            return
        leader = self._SyncObj__raftLeader
        if leader is None:
            self._fail_reads([(r, "no leader (election in progress or no quorum)")
                              for r in readers])
            return
        rid = self._reads.forward(leader, time.monotonic(), readers)
        if not self._SyncObj__transport.send(leader, {"type": "read_index", "id": rid}):
            self._fail_reads(self._reads.answered(rid, None, "not connected to the leader"))

    def _settle_reads(self) -> None:  # tick thread, end of a tick (after the poll)
        reads = self._reads
        if not reads.busy:
            return
        if self._isLeader():
            waiting = reads.unconfirmed
            failed = reads.confirm(self._SyncObj__otherNodes, self._SyncObj__raftCurrentTerm)
            if 0 < reads.unconfirmed < waiting:  # later rounds, not yet on any heartbeat
                self._SyncObj__newAppendEntriesTime = 0.0  # the next tick's heartbeat
        else:
            failed = reads.step_down("this member lost the leadership before the read was "
                                     "confirmed")
        # forwards to a member that is no longer the leader (also when this one now is)
        failed += reads.expire_forwards(self._SyncObj__raftLeader, time.monotonic(),
                                        self._forward_max_age)
        self._fail_reads(failed)
        for done in reads.applied(self._SyncObj__raftLastApplied):
            done(None)

    def _fail_reads(self, failed: list[tuple[ReadDone, str]]) -> None:
        for done, why in failed:
            done(why)

    def _on_read_message(self, node: Any, m: dict[str, Any]) -> None:  # tick thread (poll)
        if m["type"] == "read_index":  # a follower asks this member, the leader it knows
            rid = m["id"]
            if not self._isLeader():
                self._SyncObj__transport.send(node, {
                    "type": "read_index_resp", "id": rid, "error": "not the leader"})
                return

            def answer(error: str | None) -> None:  # tick thread
                reply: dict[str, Any] = {"type": "read_index_resp", "id": rid}
                if error is None:  # applied here: a committed index at or past the round's
                    reply["index"] = self._SyncObj__raftLastApplied
                else:
                    reply["error"] = error[:200]
                self._SyncObj__transport.send(node, reply)

            self._reads_held.append(answer)  # taken by the next tick, right after this poll
            return
        failed = self._reads.answered(m["id"], m.get("index"), m.get("error"))
        self._fail_reads(failed)

    def close_reads(self, why: str) -> None:  # after the tick thread stopped
        self._fail_reads(self._reads.fail_all(why))
        while self._read_requests:
            self._read_requests.popleft()(why)
        held, self._reads_held = self._reads_held, []
        self._fail_reads([(r, why) for r in held])

    def _onTick(self, timeToWait: float = 0.0) -> None:  # tick thread
        transfer, self._transfer = self._transfer, None
        if transfer is not None:  # requested from the event loop; runs where sends are safe
            self.transferLeadership(transfer[0], callback=transfer[1])
        if self._joining:
            if self._getLeader() is not None:
                self._joining = False
            else:  # no election before the first word from a leader (see RaftSettings.join)
                self._SyncObj__raftElectionDeadline = raft_clock() + self._join_hold
        try:
            self._take_reads()
            super()._onTick(timeToWait)
            self._settle_reads()
        finally:
            # Durable point 2, after the poll: the replies its handlers produced (follower
            # acks, vote responses) leave after the sync.
            self._release()

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        """Keep the leader's optimistic nextIndex from moving backwards on an in-order ack.

        PySyncObj 0.3.17 sets nextIndex = acked + 1 on every successful append response, even
        when later entries are already on the wire. With appendEntriesUseBatch=False the next
        send then repeats those entries, the follower truncates and re-appends entries it has
        applied ("truncating already-applied log entries") and the traffic grows with the
        pipeline depth. A failed append (reset=True) still rewinds nextIndex as before, so a
        lost message is re-sent.
        """
        kind = message.get("type")
        if kind in ("read_index", "read_index_resp"):
            self._on_read_message(node, message)
            return
        if kind == "next_node_idx" and "read_seq" in message and self._isLeader():
            self._reads.echoed(node, message["read_seq"])
        if (
            kind == "next_node_idx"
            and message.get("success")
            and not message.get("reset")
        ):
            next_index: dict[Any, int] = self._SyncObj__raftNextIndex
            sent = next_index.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            if sent is not None and next_index.get(node, 0) < sent:
                next_index[node] = sent
            return
        if (
            message.get("type") == "append_entries"
            and "prevLogIdx" in message
            and message.get("transmission") is None
            and message["term"] >= self._SyncObj__raftCurrentTerm
        ):
            self._echo_seq = message.get("read_seq")
            try:
                self._append_entries(node, message)
            finally:
                self._echo_seq = None
            return
        # Chunked entries (`transmission`) still go to PySyncObj: unreachable once the peer
        # transport caps entries below appendEntriesBatchSizeBytes (see COORDINATION.md).
        super()._SyncObj__onMessageReceived(node, message)

    def _append_entries(self, node: Any, m: dict[str, Any]) -> None:  # tick thread (poll)
        """Raft's AppendEntries receiver (§5.3) in place of PySyncObj 0.3.17's.

        PySyncObj deletes every entry after `prevLogIdx` whenever any follows it — also on a
        heartbeat and on a stale or repeated send — without comparing terms or looking at the
        commit index: committed, applied and acknowledged entries disappeared ("truncating
        already-applied log entries"), and with a durable log a node could then vote for a
        candidate that lacks committed entries.

        Contract: entries that match the leader's (same index, same term) are kept; the log
        is cut only at the first index whose term differs, and never at or below
        max(commit index, last applied) — a correct leader never asks that, so it is logged
        CRITICAL and not acknowledged. A heartbeat or a repeated overlap never deletes
        anything. The success ack names `prev + len(entries) + 1`: everything below it is
        known to match the leader (a longer tail of ours is unverified, so it is neither
        acknowledged nor used to advance the commit index). Like every message, the ack
        leaves after the journal sync.
        """
        # PySyncObj's bookkeeping (term, leader, election deadline, follower state, pending
        # transfer) on the same message stripped of its log part: with no prevLogIdx and our
        # own commit index, it touches neither the log nor the commit index.
        super()._SyncObj__onMessageReceived(node, {
            "type": "append_entries",
            "term": m["term"],
            "commit_index": self._SyncObj__raftCommitIndex,
        })
        self._SyncObj__leaderCommitIndex = m["commit_index"]
        journal = self._journal
        first, last = journal[0][1], journal[-1][1]
        prev, prev_term = m["prevLogIdx"], m["prevLogTerm"]
        if prev is None or prev < first or prev > last:
            self._SyncObj__sendNextNodeIdx(node, success=False, reset=True)
            return
        if journal[prev - first][2] != prev_term:
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=prev, success=False, reset=True)
            return
        entries = m.get("entries") or ()
        if any(e[1] != prev + 1 + k for k, e in enumerate(entries)):
            log.error("append_entries from %s with non-consecutive indexes refused", node)
            return
        commit = self._SyncObj__raftCommitIndex
        membership = self._SyncObj__conf.dynamicMembershipChange
        new: Sequence[Any] = ()
        for k, e in enumerate(entries):
            idx = e[1]
            if idx > last:
                new = entries[k:]
                break
            if journal[idx - first][2] == e[2]:
                continue  # Log Matching: same index and term, same entry
            floor = max(commit, self._SyncObj__raftLastApplied)
            if idx <= floor:
                log.critical(
                    "leader %s (term %d) sent entry %d (term %d) conflicting with our "
                    "committed entry %d (term %d, commit %d): refused, not acknowledged",
                    node, m["term"], idx, e[2], idx, journal[idx - first][2], floor)
                return
            if membership:  # undo our uncommitted membership changes being cut, newest first
                for old in reversed(journal[idx - first:]):
                    request = self._SyncObj__parseChangeClusterRequest(old[0])
                    if request is not None:
                        self._SyncObj__doChangeCluster(request, reverse=True)
            self._SyncObj__deleteEntriesFrom(idx)
            new = entries[k:]
            break
        for e in new:
            journal.add(e[0], e[1], e[2])
            if membership:
                request = self._SyncObj__parseChangeClusterRequest(e[0])
                if request is not None:
                    self._SyncObj__doChangeCluster(request)
        match = prev + len(entries)
        target = min(m["commit_index"], match)
        if target > commit:
            self._SyncObj__raftCommitIndex = target
            journal.setRaftCommitIndex(target)
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=match + 1, success=True)

    def _SyncObj__sendNextNodeIdx(
        self, node: Any, reset: bool = False, nextNodeIdx: int | None = None,
        success: bool = False,
    ) -> None:  # tick thread
        """PySyncObj's answer to an append_entries, echoing its read round (if any)."""
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        message: dict[str, Any] = {
            "type": "next_node_idx", "next_node_idx": nextNodeIdx, "reset": reset,
            "success": success,
        }
        if self._echo_seq is not None:
            message["read_seq"] = self._echo_seq
        self._SyncObj__transport.send(node, message)

    def _apply_items(self, items: list[bytes]) -> list[Any]:  # tick thread (CommandsMixin)
        # An empty item is a read barrier of versions before ReadIndex: it changes nothing.
        return [self._apply_one(item) if item else None for item in items]
