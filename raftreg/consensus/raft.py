"""PySyncObj behind the narrow interface the rest of raftreg sees.

Contract:
- `propose(data)` replicates one opaque command and resolves with whatever `apply_one(data)`
  returned on THIS node once THIS node has applied it. Commands from concurrent callers are
  grouped into one log entry (group commit): a lone proposal goes out at once; while
  `max_inflight` entries are being committed, new proposals wait and leave together in the
  next entry as soon as one commits, so the batch size follows the load.
- `read_barrier()` resolves once this node has applied a log entry that was proposed after the
  call began; reads served from the local state machine after it are linearizable. Concurrent
  readers share one barrier entry.
- Outcomes: `NotApplied` means the command was certainly not applied; `OutcomeUnknown` means it
  may have been (leader change, timeout after proposing). Never anything in between.
- `apply_one`, `snapshot` and `restore` run on PySyncObj's tick thread. They must not block; the
  owner hands anything slow to its event loop.

Security: nothing from the network, the log or the dump reaches pickle. The peer wire is
raftreg's (raftreg/consensus/peer.py): both ends prove the mandatory cluster secret before a
single message is processed, then every message is an authenticated, encrypted msgpack frame
of a checked shape. Log entries are msgpack (raftreg/consensus/commands.py). The raft port
binds to the configured host only.

Persistence (raftreg/consensus/journal.py, docs/design.md "Raft log and the sync rule"): our own
write-ahead log and term/vote state file in place of PySyncObj's journal, and a msgpack full dump
(custom serializer hooks), all under data_dir. The sync rule: no raft message that acknowledges
anything (an append ack, a vote) leaves before the journal state it reflects is on stable
storage (the transport holds messages in an outbox released only after
`_Fsm.durable_point()`), and the leader syncs its own entries before it counts itself in a
commit (its AppendEntries may leave first, so followers write in parallel with it). Follower
appends are Raft's (`_Fsm._append_entries`), not PySyncObj's, which truncated applied entries.

Fault injection (TEST ONLY): a `FaultInjection` given to `RaftNode(faults=...)` chooses the peer
transport class (one that drops or delays raft messages per link) and can make the node
deliberately broken (`unsafe_local_reads`, `unsafe_no_sync`). Only the test launcher
(raftreg/testing/node.py, rules in raftreg/testing/fault_transport.py) gives one; the daemon
passes none, and this package defines no fault transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.node import TCPNode

from raftreg.config import check_secret
from raftreg.consensus.commands import (
    APPEND_BATCH_BYTES,
    BATCH_MAX_BYTES,
    MAX_ITEM_BYTES,
    CommandsMixin,
)
from raftreg.consensus.journal import DurableJournal, fsync_dir
from raftreg.consensus.peer import PeerTransport
from raftreg.consensus.status import RaftStatus
from raftreg.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotApplied,
    OutcomeUnknown,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger("raftreg.consensus")

_DUMP_FORMAT = 2  # 2: entries hold msgpack commands (1: pickled, PySyncObj's journal)
_DUMP_MAGIC = "raftreg-raft-dump"

ApplyFn = Callable[[bytes], Any]
_NO_OP = b"\x01"  # PySyncObj's _COMMAND_TYPE.NO_OP entry


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
    blob = msgpack.packb({
        "magic": _DUMP_MAGIC,
        "format": _DUMP_FORMAT,
        "state": state,
        "entries": [[_NO_OP, 3, 0], [_NO_OP, 2, 0]],
        "cluster": sorted(members),
    })
    tmp = data_dir / "raft.dump.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(data_dir / "raft.dump")
    fsync_dir(data_dir)
    fsync_dir(data_dir.parent)


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


@dataclass(frozen=True, slots=True)
class RaftSettings:
    self_addr: str
    peers: tuple[str, ...]  # other members' raft addresses
    secret: str
    data_dir: Path
    heartbeat_interval: float = 0.05
    election_timeout_min: float = 0.4
    election_timeout_max: float = 0.8
    leader_fallback_timeout: float = 0.6
    max_inflight: int = 1
    batch_max: int = 512
    snapshot_entries: int = 20000
    snapshot_interval_s: float = 600.0
    # A member added to a running cluster: it never starts an election before it has heard
    # from a leader (it would only disrupt the cluster with a higher term; Raft's learner role
    # and pre-vote, which PySyncObj lacks, solve the same problem).
    join: bool = False


_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: "proposal queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader (election in progress or no quorum)",
    FAIL_REASON.NOT_LEADER: "the contacted node is not the leader",
    FAIL_REASON.REQUEST_DENIED: "request denied by the leader",
    FAIL_REASON.DISCARDED: "entry was replaced by a new leader's log",
}


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

    def _onTick(self, timeToWait: float = 0.0) -> None:  # tick thread
        transfer, self._transfer = self._transfer, None
        if transfer is not None:  # requested from the event loop; runs where sends are safe
            self.transferLeadership(transfer[0], callback=transfer[1])
        if self._joining:
            if self._getLeader() is not None:
                self._joining = False
            else:  # no election before the first word from a leader (see RaftSettings.join)
                self._SyncObj__raftElectionDeadline = time.monotonic() + self._join_hold
        try:
            super()._onTick(timeToWait)
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
        if (
            message.get("type") == "next_node_idx"
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
            self._append_entries(node, message)
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

    def _apply_items(self, items: list[bytes]) -> list[Any]:  # tick thread (CommandsMixin)
        # An empty item is a read barrier: it proves the log position and changes nothing.
        return [self._apply_one(item) if item else None for item in items]


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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class RaftNode:
    """One member of the raft group; construct it on the thread that runs the event loop."""

    def __init__(
        self,
        settings: RaftSettings,
        apply_one: ApplyFn,
        snapshot: Callable[[], bytes],
        restore: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop,
        faults: FaultInjection | None = None,
    ) -> None:
        check_secret(settings.secret)
        self._s = settings
        self._loop = loop
        self._snapshot = snapshot
        self._restore = restore
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)
        self._pending: list[tuple[bytes, asyncio.Future[Any] | None]] = []
        self._barrier: asyncio.Future[Any] | None = None
        self._inflight = 0
        self._inflight_items = 0
        self._hold = False  # proposals wait (not sent) while leadership is being handed over
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._closed = False
        conf = SyncObjConf(
            password=None,  # not PySyncObj's pickle+Fernet: PeerTransport uses the secret
            bindAddress=settings.self_addr,
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES,  # > every entry: never chunked
            appendEntriesUseBatch=False,
            appendEntriesPeriod=settings.heartbeat_interval,
            raftMinTimeout=settings.election_timeout_min,
            raftMaxTimeout=settings.election_timeout_max,
            leaderFallbackTimeout=settings.leader_fallback_timeout,
            connectionTimeout=max(settings.election_timeout_max * 2, 1.0),
            connectionRetryTime=0.2,
            autoTickPeriod=0.02,
            commandsWaitLeader=False,
            journalFile=None,  # PySyncObj's journal is replaced by ours (_JournalSlot)
            fullDumpFile=str(settings.data_dir / "raft.dump"),
            serializer=self._serialize,
            deserializer=self._deserialize,
            logCompactionMinEntries=settings.snapshot_entries,
            logCompactionMinTime=settings.snapshot_interval_s,
            useFork=False,
            tcp_keepalive=(3, 1, 3),
            dynamicMembershipChange=True,
        )
        self._faults = faults
        if faults is not None:
            log.warning("TEST ONLY fault injection is on")
        self._journal = DurableJournal(
            settings.data_dir,
            # TEST ONLY (fault injection): a deliberately broken node that never syncs
            unsafe_no_sync=None if faults is None else (lambda: faults.unsafe_no_sync),
        )
        _resume_compaction(self._journal, settings.data_dir / "raft.dump")
        self._fsm = _Fsm(settings.self_addr, list(settings.peers), conf, apply_one, self._faults,
                         journal=self._journal, secret=settings.secret, join=settings.join)

    # ----------------------------------------------------------------------------- proposals

    async def propose(self, data: bytes) -> Any:
        """Replicate one non-empty command; see the module contract for the outcomes."""
        assert data, "empty commands are reserved for read barriers"
        if len(data) > MAX_ITEM_BYTES:
            raise InvalidArgument(f"command of {len(data)} bytes exceeds {MAX_ITEM_BYTES}")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(data, fut)
        return await fut

    @property
    def pending_proposals(self) -> int:
        """Proposals (and read barriers) queued or in flight."""
        return len(self._pending) + self._inflight_items

    async def read_barrier(self) -> None:
        if self._faults is not None and self._faults.unsafe_local_reads:
            return  # TEST ONLY, deliberately broken: see FaultInjection
        if self._barrier is None:
            barrier: asyncio.Future[Any] = self._loop.create_future()
            # Every reader may have given up (cancelled) before it settles: its outcome is
            # then nobody's, and must not be logged as "never retrieved".
            barrier.add_done_callback(_retrieve)
            self._barrier = barrier
            self._enqueue(b"", None)
        await asyncio.shield(self._barrier)

    def _enqueue(self, data: bytes, fut: asyncio.Future[Any] | None) -> None:
        if self._closed:
            raise NotApplied("node is shutting down")
        self._pending.append((data, fut))
        if self._flush_handle is None and self._inflight < self._s.max_inflight and not self._hold:
            # Go now, but let callers woken in this loop turn join in.
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        # At most batch_max items and BATCH_MAX_BYTES of them (at least one), so that every
        # entry stays below APPEND_BATCH_BYTES (see raftreg/consensus/commands.py).
        cut = size = 0
        for data, _ in self._pending[: self._s.batch_max]:
            if cut and size + len(data) > BATCH_MAX_BYTES:
                break
            cut += 1
            size += len(data)
        items, self._pending = self._pending[:cut], self._pending[cut:]
        if self._barrier is not None and any(not d for d, _ in items):
            barrier, self._barrier = self._barrier, None
        else:
            barrier = None
        self._inflight += 1
        self._inflight_items += len(items)

        def on_done(result: Any, err: int) -> None:  # tick thread
            self._loop.call_soon_threadsafe(self._resolve, items, barrier, result, err)

        try:
            self._fsm.propose_group([d for d, _ in items], on_done)
        except Exception as e:  # pragma: no cover - PySyncObj raises nothing here today
            self._resolve(items, barrier, None, -1)
            log.exception("proposal failed: %s", e)

    def _resolve(
        self,
        items: list[tuple[bytes, asyncio.Future[Any] | None]],
        barrier: asyncio.Future[Any] | None,
        result: Any,
        err: int,
    ) -> None:
        self._inflight -= 1
        self._inflight_items -= len(items)
        if self._pending and self._flush_handle is None and not self._hold:
            self._flush_handle = self._loop.call_soon(self._flush)
        exc: Exception | None = None
        if err != FAIL_REASON.SUCCESS:
            if err in _NOT_APPLIED:
                kind = ResourceExhausted if err == FAIL_REASON.QUEUE_FULL else NotApplied
                exc = kind(_NOT_APPLIED[err])
            else:
                exc = OutcomeUnknown(f"leader changed before the outcome was known (reason {err})")
        for i, (_, fut) in enumerate(items):
            if fut is None or fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result[i])
        if barrier is not None and not barrier.done():
            if exc is not None:
                # A barrier that may or may not have committed proves nothing: not served.
                barrier.set_exception(Unavailable(str(exc)))
            else:
                barrier.set_result(None)

    # ----------------------------------------------------------------------------- persistence

    def _serialize(self, filename: str, data: Any) -> None:  # tick thread
        last_entry, prev_entry, cluster = data
        blob = msgpack.packb(
            {
                "magic": _DUMP_MAGIC,
                "format": _DUMP_FORMAT,
                "state": self._snapshot(),
                "entries": [list(last_entry), list(prev_entry)],
                "cluster": sorted(n.address for n in cluster),
            }
        )
        # `filename` is PySyncObj's temp file: it renames it over raft.dump after this returns,
        # and the journal's compaction that follows fsyncs the directory (making the rename
        # durable) before it drops the entries the dump replaces.
        with open(filename, "wb") as f:
            f.write(blob)
            f.flush()
            self._journal.fsync_file(f.fileno(), filename)

    def _deserialize(self, filename: str) -> tuple[Any, Any, Any]:  # tick thread
        with open(filename, "rb") as f:
            d = msgpack.unpackb(f.read())
            # A dump received from the leader was written and renamed by PySyncObj without any
            # fsync, and PySyncObj clears the log right after this returns: durable first.
            self._journal.fsync_file(f.fileno(), filename)
        self._journal.fsync_data_dir()
        if not isinstance(d, dict) or d.get("magic") != _DUMP_MAGIC:
            raise InvalidArgument(f"{filename} is not a raftreg raft dump")
        if d.get("format") != _DUMP_FORMAT:
            raise InvalidArgument(
                f"{filename}: unsupported dump format {d.get('format')} (written by another "
                "raftreg version; restore this member from a backup: `raftreg snapshot "
                "restore`)")
        self._restore(d["state"])
        last_entry, prev_entry = (tuple(e) for e in d["entries"])
        return last_entry, prev_entry, {TCPNode(a) for a in d["cluster"]}

    # ----------------------------------------------------------------------------- status

    @property
    def self_addr(self) -> str:
        return self._s.self_addr

    @property
    def is_leader(self) -> bool:
        return bool(self._fsm._isLeader())

    @property
    def leader(self) -> str | None:
        node = self._fsm._getLeader()
        return None if node is None else str(node.address)

    @property
    def term(self) -> int:
        return int(self._fsm.raftCurrentTerm)

    @property
    def members(self) -> list[str]:
        """Raft addresses of the current configuration (this node's view), sorted."""
        return sorted([self._s.self_addr, *self._peers()])

    def _peers(self) -> list[str]:
        # PySyncObj's set of other members, replaced (not mutated) by membership changes on the
        # tick thread; copying it is a plain attribute read.
        return [str(n.address) for n in list(self._fsm._SyncObj__otherNodes)]

    async def change_membership(self, op: str, peer: str) -> None:
        """Add (`op="add"`) or remove (`"remove"`) the member at raft address `peer`; returns
        once the change is committed. One change at a time: a change while another is still
        uncommitted, a removal of the leader itself, or adding a present member is refused
        (`FailedPrecondition`)."""
        fut: asyncio.Future[None] = self._loop.create_future()

        def done(result: Any, err: int) -> None:  # tick thread
            self._loop.call_soon_threadsafe(_settle, err)

        def _settle(err: int) -> None:
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                fut.set_result(None)
            elif err == FAIL_REASON.REQUEST_DENIED:
                fut.set_exception(FailedPrecondition(
                    "membership change refused: another change is in progress, the member is "
                    "(or is not) already present, or the leader was asked to remove itself"))
            elif err in _NOT_APPLIED:
                fut.set_exception(NotApplied(_NOT_APPLIED[err]))
            else:
                fut.set_exception(OutcomeUnknown(f"membership change outcome unknown ({err})"))

        if op == "add":
            self._fsm.addNodeToCluster(peer, callback=done)
        elif op == "remove":
            self._fsm.removeNodeFromCluster(peer, callback=done)
        else:
            raise InvalidArgument(f"unknown membership operation {op!r}")
        await fut

    async def wait_replicated(self, peer: str, index: int, timeout: float) -> bool:
        """On the leader: wait until `peer` holds the log up to `index` and the commit index
        covers it, then a few heartbeats more (they carry the commit index, so the peer then
        applies the entry). False if that did not happen within `timeout` (e.g. the peer is
        down)."""
        loop = self._loop
        deadline = loop.time() + timeout
        node = TCPNode(peer)
        while loop.time() < deadline:
            f = self._fsm
            match = dict(f._SyncObj__raftMatchIndex).get(node, 0)
            if match >= index and int(f.raftCommitIndex) >= index:
                await asyncio.sleep(3 * self._s.heartbeat_interval)
                return True
            await asyncio.sleep(self._s.heartbeat_interval / 2)
        return False

    async def transfer_leadership(self, timeout: float, target: str | None = None) -> None:
        """Hand the leadership to the most caught-up connected follower (or to the member at
        raft address `target`) with Raft's TimeoutNow, and return once this node is no longer
        the leader; `Unavailable` after `timeout`.

        New proposals are held back meanwhile (queued, not sent): the target can only win if
        its log is as long as the leader's, which a steady write load would otherwise prevent.
        Held proposals go out when the transfer ends (forwarded to the new leader)."""
        loop = self._loop
        deadline = loop.time() + timeout
        self._hold = True
        try:
            while loop.time() < deadline:
                if not self.is_leader:
                    return
                if self._inflight == 0 and await self._request_transfer(target):
                    settle = loop.time() + 2 * self._s.election_timeout_max
                    while loop.time() < min(settle, deadline) and self.is_leader:
                        await asyncio.sleep(0.01)
                    if not self.is_leader:
                        return
                await asyncio.sleep(0.01)
            raise Unavailable("no follower took over the leadership in time; retry")
        finally:
            self._hold = False
            if self._pending and self._flush_handle is None and not self._closed:
                self._flush_handle = loop.call_soon(self._flush)

    async def _request_transfer(self, target: str | None) -> bool:
        """One TimeoutNow to `target` (None: the most caught-up follower); False if PySyncObj
        refused (the follower is not fully caught up yet)."""
        fut: asyncio.Future[int] = self._loop.create_future()

        def settle(err: int) -> None:
            if not fut.done():
                fut.set_result(err)

        def done(result: Any, err: int) -> None:  # tick thread
            self._loop.call_soon_threadsafe(settle, err)

        # PySyncObj's transport is not thread-safe: the tick thread sends the TimeoutNow
        self._fsm._transfer = (target, done)
        return bool(await fut == FAIL_REASON.SUCCESS)

    def status(self) -> RaftStatus:
        # Plain attribute reads only: getStatus() iterates dicts the tick thread mutates.
        f = self._fsm
        leader = f._getLeader()
        return RaftStatus(
            self_addr=self._s.self_addr,
            leader=None if leader is None else str(leader.address),
            is_leader=bool(f._isLeader()),
            term=int(f.raftCurrentTerm),
            commit_index=int(f.raftCommitIndex),
            applied_index=int(f.raftLastApplied),
            log_len=int(f._getRaftLogSize()),
            connected=frozenset(p for p in self._peers() if f.isNodeConnected(TCPNode(p))),
            has_quorum=bool(f.hasQuorum),
            fdatasyncs=self._journal.fdatasyncs,
            fsyncs=self._journal.fsyncs,
        )

    # ----------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the tick thread and fail whatever is still waiting."""
        if self._closed:
            return
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._fsm.destroy()
        deadline = time.monotonic() + 2.0
        while self._fsm.tick_thread_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        pending, self._pending = self._pending, []
        for _, fut in pending:
            if fut is not None and not fut.done():
                fut.set_exception(NotApplied("node is shutting down"))
        if self._barrier is not None and not self._barrier.done():
            self._barrier.set_exception(Unavailable("node is shutting down"))
