"""One registry node: the store, replicated by the consensus adapter, behind async read/write.

Threading contract: the store is mutated only inside `_apply_one`, on whatever thread the
consensus applies on (PySyncObj's tick thread for `RaftNode`, the event loop for
`LocalConsensus`), under `self._lock`; the event loop reads it under the same lock. Nothing on
the apply thread waits for the event loop: applied events are handed over with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from raftreg.common.clock import Clock
from raftreg.common.types import Event, Range, RangeResult
from raftreg.config import ClusterConfig, NodeConfig, split_hostport
from raftreg.consensus import Consensus, ConsensusFactory, RaftStatus, StateMachine
from raftreg.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotApplied,
    NotFound,
    OutcomeUnknown,
    ResourceExhausted,
    Unavailable,
)
from raftreg.server.heap import hold_collector
from raftreg.server.lessor import Lessor
from raftreg.server.watch_hub import WatchHub
from raftreg.store import LeaseInfo, Store, decode_request, encode_request, failure_to_error
from raftreg.store.commands import (
    Command,
    Compact,
    ExpireClients,
    Failure,
    LeaseGrant,
    MemberUpdate,
    Request,
    Result,
)

log = logging.getLogger("raftreg.node")


@dataclass(slots=True)
class NodeCounters:
    """Monotonic counters for metrics. `snapshot_seconds[op]` is (count, total seconds) for
    op "save" / "restore"."""

    leader_changes: int = 0
    proposals_failed: dict[str, int] = field(default_factory=dict)
    snapshot_seconds: dict[str, tuple[int, float]] = field(default_factory=dict)

    def failed(self, reason: str) -> None:
        self.proposals_failed[reason] = self.proposals_failed.get(reason, 0) + 1

    def snapshot(self, op: str, seconds: float) -> None:
        n, total = self.snapshot_seconds.get(op, (0, 0.0))
        self.snapshot_seconds[op] = (n + 1, total + seconds)


def stable_id(name: str) -> int:
    """A 63-bit id derived from a name, the same on every node (member and cluster ids)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    raft: str
    client: str


EventSink = Callable[[int, list[Event]], None]


class RegistryNode:
    """One member's store behind async reads and writes. `consensus(state_machine)` builds
    what replicates its commands (the composition root chooses: `RaftNode` in the daemon,
    `LocalConsensus` in unit tests); the node calls it back only through `StateMachine`.
    `clock` (default: the monotonic clock and asyncio's sleep) times the lessor's deadlines
    and its expiry loop."""

    def __init__(
        self,
        cfg: ClusterConfig,
        name: str,
        *,
        loop: asyncio.AbstractEventLoop,
        consensus: ConsensusFactory,
        clock: Clock | None = None,
    ) -> None:
        s = cfg.settings
        self.cfg = cfg
        self.me: NodeConfig = cfg.node(name)
        self.cluster_id = stable_id(s.name)
        self.member_id = stable_id(name)
        self._loop = loop
        # Set once this node applies its own removal from the cluster: the process then stops.
        self.removed = asyncio.Event()
        self._membership_lock = asyncio.Lock()
        self._lock = threading.Lock()
        self.counters = NodeCounters()
        self.store = Store(max_value_bytes=s.max_value_bytes, max_txn_ops=s.max_txn_ops,
                           client_window=s.client_window)
        self._sinks: list[EventSink] = []
        self._unpublished: list[tuple[int, list[Event]] | None] = []  # applied, not published
        self._publish_scheduled = False
        self._propose_timeout = s.propose_timeout_s
        self.watches = WatchHub(
            lambda: self.store.revision, self._history, buffer_limit=s.watch_buffer_events
        )
        self.add_event_sink(self.watches.publish)
        self.lessor = Lessor(
            is_leader=lambda: self.raft.is_leader,
            term=lambda: self.raft.term,
            ttls=self._lease_ttls,
            ttl=self._lease_ttl,
            lease=self._lease,
            barrier=self.barrier,
            propose=self.write,
            epoch=lambda: self.store.leader_epoch,
            checkpoints=self._lease_checkpoints,
            checkpoint_interval=s.lease_checkpoint_interval_s,
            clock=time.monotonic if clock is None else clock.now,
            sleep=asyncio.sleep if clock is None else clock.sleep,
        )
        self.raft: Consensus = consensus(StateMachine(self._apply_one, self._freeze,
                                                      self._restore))

    # ------------------------------------------------------------------ tick-thread callbacks

    def _apply_one(self, data: bytes) -> Result:
        request = decode_request(data)
        with self._lock:
            result, events = self.store.apply(request)
        cmd = request.command
        if isinstance(cmd, MemberUpdate) and cmd.removed and cmd.id == self.member_id:
            self._loop.call_soon_threadsafe(self.removed.set)
        if events and self._sinks:
            self._hand_over((result.revision, events))
        return result

    def _hand_over(self, item: tuple[int, list[Event]] | None) -> None:
        """Queue applied events (or None: "the store was replaced, resync") for the event loop,
        in apply order. One wake-up of the loop per burst of applies, not one per command: a
        group-committed entry applies hundreds of commands in a row."""
        with self._lock:
            self._unpublished.append(item)
            wake = not self._publish_scheduled
            self._publish_scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(self._publish)

    def _freeze(self) -> Callable[[], Iterator[bytes]]:
        """The store now, encoded later off the lock (raft's dump thread); the save's time
        counted is the freeze plus the encoding."""
        t0 = time.perf_counter()
        with self._lock:
            view = self.store.freeze()
            hold_collector(view.kv)
        frozen = time.perf_counter() - t0

        def encode() -> Iterator[bytes]:
            t1 = time.perf_counter()
            yield from view.chunks()
            self.counters.snapshot("save", frozen + time.perf_counter() - t1)

        return encode

    def _restore(self, blob: bytes) -> None:
        t0 = time.perf_counter()
        # Decoded outside the lock (seconds at 1,000,000 keys): the event loop goes on serving
        # the old state meanwhile (keepalive relays, watches, serializable reads, Status);
        # only this thread applies, so nothing changes the store in between.
        state = self.store.decode(blob)
        with self._lock:
            self.store.install(state)
        self.counters.snapshot("restore", time.perf_counter() - t0)
        log.info("restored state from snapshot at revision %d", self.store.revision)
        self._hand_over(None)

    # ------------------------------------------------------------------ locked store views

    def _history(self, start: int, key: bytes, range_end: bytes, limit: int) -> list[Event]:
        with self._lock:
            return self.store.events_since(start, key, range_end, limit)

    def _lease_ttls(self) -> dict[int, int]:
        with self._lock:
            return self.store.lease_ttls()

    def _lease_checkpoints(self, ids: Iterable[int] | None) -> dict[int, int]:
        with self._lock:
            return self.store.lease_checkpoints(ids)

    def _lease_ttl(self, lease_id: int) -> int | None:
        with self._lock:
            return self.store.lease_ttl(lease_id)

    def _lease(self, lease_id: int) -> LeaseInfo | None:
        with self._lock:
            return self.store.lease(lease_id)

    def _publish(self) -> None:
        """On the event loop: hand applied events to the sinks, in apply order."""
        with self._lock:
            batch, self._unpublished = self._unpublished, []
            self._publish_scheduled = False
        for item in batch:
            if item is None:
                self.watches.resync()
                continue
            for sink in self._sinks:
                sink(*item)

    def add_event_sink(self, sink: EventSink) -> None:
        """`sink(revision, events)` is called on the event loop, in apply order."""
        self._sinks.append(sink)

    # ------------------------------------------------------------------ requests

    async def write(self, command: Command, client_id: int = 0, seq: int = 0) -> Result:
        """Validate, replicate and apply one command; raise the domain error on failure."""
        if isinstance(command, LeaseGrant) and command.id == 0:
            command = LeaseGrant(random.getrandbits(62) + 1, command.ttl)
        self.store.validate(command)
        req = Request(command, now_ms=int(time.time() * 1000), client_id=client_id, seq=seq)
        try:
            result: Result = await asyncio.wait_for(
                self.raft.propose(encode_request(req)), self._propose_timeout
            )
        except ResourceExhausted:
            self.counters.failed("queue_full")
            raise
        except Unavailable as e:
            self.counters.failed("unknown_outcome" if isinstance(e, OutcomeUnknown) else "refused")
            raise
        except TimeoutError:
            self.counters.failed("timeout")
            raise OutcomeUnknown(
                f"no commit within {self._propose_timeout:g}s; the write may still apply"
            ) from None
        if isinstance(result, Failure):
            raise failure_to_error(result)
        return result

    async def read(self, r: Range, *, serializable: bool = False) -> RangeResult:
        if not serializable:
            await self.barrier()
        with self._lock:
            return self.store.range(r)

    async def barrier(self) -> None:
        """Wait until this node has applied everything committed before the call."""
        try:
            await asyncio.wait_for(self.raft.read_barrier(), self._propose_timeout)
        except TimeoutError:
            raise Unavailable(
                f"no quorum confirmed the read within {self._propose_timeout:g}s"
            ) from None

    async def backup(self) -> tuple[bytes, int]:
        """(store snapshot, its revision) at a linearizable point: everything acknowledged
        before the call is in it."""
        await self.barrier()
        t0 = time.perf_counter()
        with self._lock:
            view = self.store.freeze()
            hold_collector(view.kv)
        state = await asyncio.to_thread(view.encode)  # off the loop: reads and writes go on
        self.counters.snapshot("backup", time.perf_counter() - t0)
        return state, view.revision

    # ------------------------------------------------------------------ views

    @property
    def revision(self) -> int:
        return self.store.revision

    def raft_status(self) -> RaftStatus:
        return self.raft.status()

    @property
    def members(self) -> list[Member]:
        """The current members, by id: the raft configuration as this node sees it, named by
        the replicated member records, else by the configuration file. A raft member with no
        record and not in the file (added, record not yet applied) has an empty name."""
        with self._lock:
            records = self.store.members()
        named = {m.raft: m for m in (
            Member(stable_id(n.name), n.name, n.raft, n.client) for n in self.cfg.nodes)}
        for r in records:
            if r.removed:
                if named.get(r.peer) is not None and named[r.peer].id == r.id:
                    del named[r.peer]
            else:
                named[r.peer] = Member(r.id, r.name, r.peer, r.client)
        out = [named.get(addr) or Member(stable_id(addr), "", addr, "")
               for addr in self.raft.members]
        return sorted(out, key=lambda m: m.id)

    def leader_member(self) -> Member | None:
        leader = self.raft.leader
        if leader is None:
            return None
        return next((m for m in self.members if m.raft == leader), None)

    async def add_member(self, name: str, peer: str, client: str) -> Member:
        """On the leader: add a member, one change at a time; returns once both the raft
        configuration change and the member record are committed. Start the new node after
        this returns (its data dir empty): it catches up from the leader."""
        for what, addr in (("peer", peer), ("client", client)):
            if what == "client" and not addr:
                continue  # unknown yet (etcd's MemberAdd names none)
            try:
                split_hostport(addr)
            except InvalidArgument:
                raise InvalidArgument(f"{what} address {addr!r} is not host:port") from None
        if not name or len(name) > 64:
            raise InvalidArgument("member name must be 1-64 characters")
        async with self._membership_lock:
            self._need_leader()
            for m in self.members:
                if m.name == name or m.raft == peer or (client and m.client == client):
                    raise AlreadyExists(f"member {m.name or m.raft} already uses that name "
                                        "or address")
            # The record first: a record whose raft change never happens names no member (the
            # member list follows the raft configuration), while a raft member without its
            # record would stay nameless.
            member = Member(stable_id(name), name, peer, client)
            await self.write(MemberUpdate(member.id, name, peer, client))
            await self.raft.change_membership("add", peer)
            log.info("member %s added (raft %s, client %s)", name, peer, client)
            return member

    async def remove_member(self, member_id: int) -> Member:
        """On the leader, for a member other than itself: the removal record is committed
        first (the removed node applies it and stops), then the raft configuration change.
        If the raft change fails the record is restored."""
        async with self._membership_lock:
            self._need_leader()
            m = next((x for x in self.members if x.id == member_id), None)
            if m is None:
                raise NotFound(f"member {member_id:x} not found")
            if m.raft == self.me.raft:
                raise FailedPrecondition("the leader cannot remove itself; transfer first")
            if len(self.members) <= 1:
                raise FailedPrecondition("cannot remove the last member")
            name = m.name or m.raft
            client = m.client or m.raft
            await self.write(MemberUpdate(m.id, name, m.raft, client, removed=True))
            # The removed node learns of its removal only by applying that record, and the
            # record commits on a majority that need not include it: let it catch up before
            # the raft change cuts it off (a node that is down just misses it).
            st = self.raft.status()
            if m.raft not in st.connected:
                log.info("member %s is not connected: removing it without waiting", name)
            elif not await self.raft.wait_replicated(m.raft, st.applied_index,
                                                     self._propose_timeout):
                log.warning("member %s did not receive its removal record; removing it anyway",
                            name)
            try:
                await self.raft.change_membership("remove", m.raft)
            except Exception:
                await self.write(MemberUpdate(m.id, name, m.raft, client))
                raise
            log.info("member %s removed", name)
            return m

    async def step_down(self, timeout: float, target: str | None = None) -> str:
        """Hand the leadership to a caught-up follower (the member at raft address `target`,
        if given); returns the new leader's raft address (`Unavailable` if none took over
        within `timeout`)."""
        self._need_leader()
        deadline = self._loop.time() + timeout
        await self.raft.transfer_leadership(timeout, target)
        while self._loop.time() < deadline:
            leader = self.raft.leader
            if leader is not None and leader != self.me.raft:
                return leader
            await asyncio.sleep(0.02)
        raise Unavailable("no other member took over the leadership in time; retry")

    def _need_leader(self) -> None:
        if not self.raft.is_leader:
            raise NotApplied("not the leader (membership changes are made on the leader)")

    def leader_client_addr(self) -> str | None:
        m = self.leader_member()
        return None if m is None else m.client

    def removed_for_good(self) -> bool:
        """Whether the latest member record for this node says it was removed (a node that
        was removed and added again under its name replays the old removal first)."""
        with self._lock:
            rec = next((m for m in self.store.members() if m.id == self.member_id), None)
        return rec is not None and rec.removed

    def disk_usage(self) -> int:
        """Bytes of this node's data dir (raft journal and dump): etcd's "db size"."""
        total = 0
        for p in self.cfg.data_dir(self.me).iterdir():
            with contextlib.suppress(OSError):  # a dump being replaced
                if p.is_file():
                    total += p.stat().st_size
        return total

    def lease_keys(self, lease_id: int) -> frozenset[bytes] | None:
        """The keys attached to a lease on this replica (None: no such lease), copied under
        the store lock."""
        with self._lock:
            info = self.store.lease(lease_id)
            return None if info is None else frozenset(info.keys)

    def lease_ids(self) -> list[int]:
        with self._lock:
            return [lease.id for lease in self.store.leases()]

    def watcher_count(self) -> int:
        return len(self.watches)

    def hash_kv(self, revision: int) -> tuple[int, int, int]:
        """(CRC-32 of the key-values at `revision` (0: current), that revision, compact
        revision) on this replica, read atomically."""
        with self._lock:
            h, at = self.store.hash_kv(revision)
            return h, at, self.store.compact_revision

    def store_counts(self) -> tuple[int, int, int]:
        """(keys, compact_revision, leases) read atomically; cheap."""
        with self._lock:
            st = self.store
            return st.key_count(), st.compact_revision, st.lease_count()

    def store_hash(self) -> int:
        """The full-state hash (`Store.hash`): reads every key under the lock, so only for
        explicit requests (Hash, Status with_hash), never for routine traffic."""
        with self._lock:
            return self.store.hash()

    # ------------------------------------------------------------------ leader housekeeping

    async def housekeeping(self) -> None:
        """Leader-only periodic commands: automatic compaction and request-table expiry."""
        s = self.cfg.settings
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            if not self.raft.is_leader:
                continue
            try:
                rev, compacted = self.store.revision, self.store.compact_revision
                keep = s.auto_compact_retain
                if keep and rev - compacted > keep + keep // 10:
                    await self.write(Compact(rev - keep))
                idle_before = int((time.time() - s.client_idle_expiry_s) * 1000)
                if idle_before > 0 and ticks % 60 == 0:
                    await self.write(ExpireClients(idle_before))
            except InvalidArgument:
                log.exception("housekeeping command rejected")
            except Exception as e:  # leadership moved, no quorum: the next leader takes over
                log.debug("housekeeping skipped: %s", e)

    async def progress_notifications(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.settings.watch_progress_interval_s)
            self.watches.progress()

    def close(self) -> None:
        self.raft.close()
