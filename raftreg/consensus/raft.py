"""PySyncObj behind the narrow interface the rest of raftreg sees: `RaftNode`, the asyncio
side of one member, and its `RaftSettings`.

Contract:
- `propose(data)` replicates one opaque command and resolves with whatever `apply_one(data)`
  returned on THIS node once THIS node has applied it. Commands from concurrent callers are
  grouped into one log entry (group commit): a lone proposal goes out at once; while
  `max_inflight` entries are being committed, new proposals wait and leave together in the
  next entry as soon as one commits, so the batch size follows the load.
- `read_barrier()` resolves once this node has applied a read index confirmed after the call
  began (ReadIndex, read_index.py: no log entry, one heartbeat round acknowledged by a
  majority); reads served from the local state machine after it are linearizable. Readers of
  one event-loop turn share one request, and requests taken in one tick share one round. It
  fails with `Unavailable` (nothing to undo: a read changes nothing) when no leader confirms
  it.
- Outcomes: `NotApplied` means the command was certainly not applied; `OutcomeUnknown` means it
  may have been (leader change, timeout after proposing). Never anything in between.

Threads: every public method of `RaftNode` runs on its event loop (construct it on that
thread). `apply_one`, `freeze` and `restore` run on PySyncObj's tick thread (fsm.py): they
must not block; the owner hands anything slow to its event loop. `freeze` returns at once
what encodes the state later: the dump is encoded and written on its own thread
(dump.py `DumpWriter`), so heartbeats and applies go on while a large store is saved.
Completions cross from the tick thread to the loop only through `call_soon_threadsafe`; the
loop reads the `_Fsm`'s state through plain attribute reads (never PySyncObj's iterating
getters).

Security: nothing from the network, the log or the dump reaches pickle. The peer wire is
raftreg's (raftreg/consensus/peer.py): both ends prove the mandatory cluster secret before a
single message is processed, then every message is an authenticated, encrypted msgpack frame
of a checked shape. Log entries are msgpack (raftreg/consensus/commands.py). The raft port
binds to the configured host only.

Persistence (raftreg/consensus/journal.py, docs/design.md "Raft log and the sync rule"): our own
write-ahead log and term/vote state file in place of PySyncObj's journal, and a msgpack full dump
(dump.py, written and read by this module's serializer hooks), all under data_dir. The sync rule
and the follower's AppendEntries are the `_Fsm`'s (fsm.py).

Fault injection (TEST ONLY): a `FaultInjection` (fsm.py) given to `RaftNode(faults=...)` chooses
the peer transport class (one that drops or delays raft messages per link) and can make the node
deliberately broken (`unsafe_local_reads`, `unsafe_no_sync`). Only the test launcher
(raftreg/testing/node.py, rules in raftreg/testing/fault_transport.py) gives one; the daemon
passes none, and this package defines no fault transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObjConf
from pysyncobj.node import TCPNode

from raftreg.config import check_secret
from raftreg.consensus.commands import APPEND_BATCH_BYTES, BATCH_MAX_BYTES, MAX_ITEM_BYTES
from raftreg.consensus.dump import (
    DUMP_REST,
    DumpWriter,
    _resume_compaction,
    seed_data_dir,
    unpack_dump,
)
from raftreg.consensus.fsm import ApplyFn, FaultInjection, _Fsm
from raftreg.consensus.journal import DurableJournal
from raftreg.consensus.status import RaftStatus
from raftreg.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotApplied,
    OutcomeUnknown,
    ResourceExhausted,
    Unavailable,
)

# FaultInjection and seed_data_dir: re-exported, `raftreg.consensus.raft` names them too.
__all__ = ["FaultInjection", "RaftNode", "RaftSettings", "seed_data_dir"]

log = logging.getLogger("raftreg.consensus")


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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class RaftNode:
    """One member of the raft group; construct it on the thread that runs the event loop."""

    def __init__(
        self,
        settings: RaftSettings,
        apply_one: ApplyFn,
        freeze: Callable[[], Callable[[], Iterable[bytes]]],
        restore: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop,
        faults: FaultInjection | None = None,
    ) -> None:
        check_secret(settings.secret)
        self._s = settings
        self._loop = loop
        self._freeze = freeze
        self._restore = restore
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._read_group: asyncio.Future[None] | None = None  # readers of this loop turn
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
            serializeChecker=self._check_dump,
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
        self._dumps = DumpWriter(settings.data_dir / "raft.dump", self._journal.fsync_file,
                                 rest=DUMP_REST)
        self._fsm = _Fsm(settings.self_addr, list(settings.peers), conf, apply_one, self._faults,
                         journal=self._journal, secret=settings.secret, join=settings.join)

    # ----------------------------------------------------------------------------- proposals

    async def propose(self, data: bytes) -> Any:
        """Replicate one non-empty command; see the module contract for the outcomes."""
        assert data, "empty commands are the read barriers of older versions"
        if len(data) > MAX_ITEM_BYTES:
            raise InvalidArgument(f"command of {len(data)} bytes exceeds {MAX_ITEM_BYTES}")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(data, fut)
        return await fut

    @property
    def pending_proposals(self) -> int:
        """Proposals queued or in flight."""
        return len(self._pending) + self._inflight_items

    async def read_barrier(self) -> None:
        if self._faults is not None and self._faults.unsafe_local_reads:
            return  # TEST ONLY, deliberately broken: see FaultInjection
        if self._closed:
            raise Unavailable("node is shutting down")
        group = self._read_group
        if group is None:
            # Readers of this loop turn share one request; it is made when the turn ends, so
            # its round starts after every one of them began (none joins a running round).
            group = self._read_group = self._loop.create_future()
            # Every reader may have given up before it settles: then nobody retrieves it.
            group.add_done_callback(_retrieve)
            self._loop.call_soon(self._request_read, group)
        await asyncio.shield(group)

    def _request_read(self, group: asyncio.Future[None]) -> None:
        self._read_group = None
        loop = self._loop

        def settle(error: str | None) -> None:
            if group.done():
                return
            if error is None:
                group.set_result(None)
            else:
                group.set_exception(Unavailable(f"read not confirmed: {error}"))

        def done(error: str | None) -> None:  # tick thread (or the loop, at close)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(settle, error)

        if self._closed:
            settle("node is shutting down")
        else:
            self._fsm.request_read(done)

    def _enqueue(self, data: bytes, fut: asyncio.Future[Any]) -> None:
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
        self._inflight += 1
        self._inflight_items += len(items)

        def on_done(result: Any, err: int) -> None:  # tick thread
            self._loop.call_soon_threadsafe(self._resolve, items, result, err)

        try:
            self._fsm.propose_group([d for d, _ in items], on_done)
        except Exception as e:  # pragma: no cover - PySyncObj raises nothing here today
            self._resolve(items, None, -1)
            log.exception("proposal failed: %s", e)

    def _resolve(
        self,
        items: list[tuple[bytes, asyncio.Future[Any]]],
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
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result[i])

    # ----------------------------------------------------------------------------- persistence

    def _serialize(self, filename: str, data: Any) -> None:  # tick thread
        last_entry, prev_entry, cluster = data
        self._dumps.start(self._freeze, last_entry, prev_entry, [n.address for n in cluster])
        # PySyncObj renames `filename` over the dump once this returns. We never write it (the
        # dump is renamed in `_check_dump` when written): that rename fails, PySyncObj ignores
        # the failure, and `_check_dump`, its serializeChecker, reports the outcome.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(filename)

    def _check_dump(self) -> int:  # tick thread
        return self._dumps.check()

    def _deserialize(self, filename: str) -> tuple[Any, Any, Any]:  # tick thread
        self._dumps.installed()
        with open(filename, "rb") as f:
            d = msgpack.unpackb(f.read())
            # A dump received from the leader was written and renamed by PySyncObj without any
            # fsync, and PySyncObj clears the log right after this returns: durable first.
            self._journal.fsync_file(f.fileno(), filename)
        self._journal.fsync_data_dir()
        state, last_entry, prev_entry, cluster = unpack_dump(d, filename)
        self._restore(state)
        return last_entry, prev_entry, {TCPNode(a) for a in cluster}

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
            if not fut.done():
                fut.set_exception(NotApplied("node is shutting down"))
        if not self._fsm.tick_thread_alive():  # else its readers time out (node.barrier)
            self._fsm.close_reads("node is shutting down")
        self._dumps.close(timeout=30.0)
