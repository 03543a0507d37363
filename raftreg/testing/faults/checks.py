"""The checks of a schedule run, and the reads they need.

- after heal, per node: the committed history through a catch-up watch from revision 1
  (`_committed_history` on raw stubs for raftreg, `_etcd_committed_history` through
  `EtcdRegistryClient` for etcd) and the final state (`_final_state`, `_etcd_all_keys`);
- the recorded writes against the committed history (`_check_writes`);
- the watches' liveness (`_wait_watches`: a lagging watch is a liveness failure, not a gap);
- at most one leader per term (`_LeaderPoller`, polling every node's Status all along the run
  as an asyncio task).

The checks that need no cluster (history consistency, watch streams, linearizability) live in
`raftreg.testing.watchcheck` and `raftreg.testing.lincheck`; the runner calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import grpc

from raftreg.client.etcd import EtcdRegistryClient
from raftreg.common.convert import event_from_pb, range_result_from_pb
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.history import CHANNEL_OPTIONS, PREFIX, History, Workload

STATUS_POLL_S = 0.1


async def _committed_history(endpoint: str, until_rev: int, timeout: float = 20.0) -> list[Event]:
    """Every committed event (all keys) from revision 1 through `until_rev`, from one node."""
    events: list[Event] = []
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        req = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=b"\0", range_end=b"\0", start_revision=1, prev_kv=True
            )
        )

        async def reqs() -> Any:
            yield req
            await asyncio.sleep(timeout + 5)

        call: Any = pbg.WatchStub(ch).Watch(reqs(), wait_for_ready=True)
        deadline = time.monotonic() + timeout
        try:
            while not events or events[-1].kv.mod_revision < until_rev:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"catch-up on {endpoint} stopped at "
                                       f"{events[-1].kv.mod_revision if events else 0}")
                resp = await asyncio.wait_for(call.read(), left)
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise TimeoutError(f"catch-up stream on {endpoint} ended")
                if resp.canceled:
                    raise TimeoutError(f"catch-up on {endpoint} canceled: {resp.cancel_reason}")
                events.extend(event_from_pb(e) for e in resp.events)
        finally:
            call.cancel()
    return events


async def _final_state(endpoint: str, revision: int) -> dict[bytes, Any]:
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        key = PREFIX.encode()
        resp = await pbg.KVStub(ch).Range(
            pb.RangeRequest(key=key, range_end=prefix_range_end(key), revision=revision,
                            serializable=True),
            timeout=5,
            wait_for_ready=True,
        )
        return {kv.key: kv for kv in range_result_from_pb(resp).kvs}


def _check_writes(h: History, committed: Sequence[Event]) -> list[str]:
    """Acknowledged writes present at their revision; failed ones absent; none applied twice."""
    out: list[str] = []
    puts: dict[bytes, list[Event]] = {}  # value -> put events carrying it
    at: dict[tuple[int, bytes], Event] = {}
    for ev in committed:
        at[(ev.kv.mod_revision, ev.kv.key)] = ev
        if ev.type == EventType.PUT:
            puts.setdefault(ev.kv.value, []).append(ev)
    for value, evs in puts.items():
        if len(evs) > 1 and not value.startswith(b"/zz"):
            out.append(f"value {value!r} written {len(evs)} times (a write applied twice): "
                       f"revisions {[x.kv.mod_revision for x in evs]}")
    e: Event | None
    for op in h.ops:
        if op.kind not in ("put", "cas", "delete", "lease_put"):
            continue
        key = op.key.encode()
        val = (op.value or "").encode()
        if op.outcome == "ok":
            if op.kind in ("put", "lease_put") or (op.kind == "cas" and op.output is True):
                e = at.get((op.revision, key))
                if e is None or e.type != EventType.PUT or e.kv.value != val:
                    out.append(f"acknowledged {op.kind} {op.key}={op.value} (client {op.client}, "
                               f"revision {op.revision}) is not in the committed history there")
            elif op.kind == "delete" and op.output:
                e = at.get((op.revision, key))
                if e is None or e.type != EventType.DELETE:
                    out.append(f"acknowledged delete of {op.key} (revision {op.revision}) is not "
                               f"in the committed history")
        elif op.outcome == "fail" and op.kind in ("put", "lease_put", "cas") and val in puts:
            out.append(f"{op.kind} {op.key}={op.value} reported failed ({op.error}) but applied "
                       f"at revision {puts[val][0].kv.mod_revision}")
        if len(out) > 20:
            break
    return out


async def _wait_watches(
    wl: Workload, committed: Sequence[Event], timeout: float
) -> dict[str, str]:
    """Wait (up to `timeout` seconds) until every live watch has delivered the last committed
    revision on the workload's range. Returns, by watch name, a "watch lagging" violation for
    each one that has not: a liveness failure, reported as such. (`check_watch` judges what
    was delivered: order, gaps, whole revisions; the caller checks a lagging watch without
    the completeness check, so a lag is never reported as a gap.)"""
    want = max((e.kv.mod_revision for e in committed if e.kv.key.startswith(PREFIX.encode())),
               default=0)
    deadline = time.monotonic() + timeout
    while True:
        lagging = [w for w in wl.watches if w.last_revision < want and not w.end_error]
        if not lagging or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    return {w.name: f"watch lagging: {w.name} had delivered up to revision {w.last_revision} "
                    f"of {want} {timeout:g}s after the history was read" for w in lagging}



# ---------------------------------------------------------------------------------------------
# etcd: the committed history and the final states through the client (no raw stubs)


async def _etcd_committed_history(endpoint: str, until_rev: int,
                                  timeout: float = 20.0) -> list[Event]:
    """Every committed event (all keys) from revision 1 through `until_rev`, from one etcd
    member: the client's `Watch` from revision 1 on a client pinned to that member."""
    events: list[Event] = []
    async with EtcdRegistryClient([endpoint], timeout=3.0, retry_budget=10.0) as c:
        w = await c.watch(b"\0", range_end=b"\0", start_revision=1, prev_kv=True)
        it = w.__aiter__()
        deadline = time.monotonic() + timeout
        try:
            while not events or events[-1].kv.mod_revision < until_rev:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"catch-up on {endpoint} stopped at "
                                       f"{events[-1].kv.mod_revision if events else 0}")
                try:
                    b = await asyncio.wait_for(it.__anext__(), left)
                except StopAsyncIteration:
                    raise TimeoutError(f"catch-up watch on {endpoint} ended") from None
                if b.compacted:
                    raise TimeoutError(f"catch-up on {endpoint} compacted at "
                                       f"{b.compact_revision}")
                events.extend(b.events)
        finally:
            w.cancel()
    return events


async def _etcd_all_keys(endpoint: str, revision: int) -> dict[bytes, KeyValue]:
    """Every key of one etcd member at `revision` (serializable: that member's own data)."""
    async with EtcdRegistryClient([endpoint], timeout=5.0, retry_budget=5.0) as c:
        r = await c.get(b"\0", range_end=b"\0", revision=revision, serializable=True)
    return {kv.key: kv for kv in r.kvs}



class _LeaderPoller:
    """Polls every node's Status all along: which nodes said they led which term.

    A node's Status reads its term, then its leader, then its term again (the header): a claim
    counts only when both terms agree, so a term change in between cannot fake one."""

    def __init__(self, c: ProcessCluster) -> None:
        self.c = c
        self.claims: dict[int, set[str]] = {}
        self.polls = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        channels = {n: grpc.aio.insecure_channel(self.c.client[n], options=CHANNEL_OPTIONS)
                    for n in self.c.names}
        try:
            while not stop.is_set():
                up = [n for n in self.c.names if self.c.alive(n) and n not in self.c.paused]
                await asyncio.gather(*(self._poll(n, channels[n]) for n in up if n in channels))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_POLL_S)
        finally:
            for ch in channels.values():
                await ch.close(None)

    async def _poll(self, name: str, ch: grpc.aio.Channel) -> None:
        try:
            st = await pbg.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=0.5)
        except grpc.aio.AioRpcError:
            self.failed += 1
            return
        self.polls += 1
        if st.leader and st.leader == st.header.member_id and st.raftTerm == st.header.raft_term:
            self.claims.setdefault(st.raftTerm, set()).add(name)

    def violations(self) -> list[str]:
        return [f"two leaders in term {t}: {', '.join(sorted(ns))} (each said it led)"
                for t, ns in sorted(self.claims.items()) if len(ns) > 1]
