"""The fault workload's live lease check can fail: a backend that loses a lease before its TTL is
flagged, and one that keeps it is not. In memory (the real `Store` behind
`MemoryRegistryClient`), so it needs no cluster; the check itself is the one every fault
schedule runs (`Workload.lease_client`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from raftreg.client import MemoryRegistryClient
from raftreg.common.types import LeaseGrantResult
from raftreg.testing.history import History, Workload, WorkloadConfig

pytestmark = pytest.mark.timeout(30)


class _LosesLeases(MemoryRegistryClient):
    """A backend that revokes every lease right after granting it: an early expiry."""

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResult:
        g = await super().lease_grant(ttl, id=id)
        await self.lease_revoke(g.id)
        return g


async def _run_lease_client(client: MemoryRegistryClient, *, renewals: int) -> History:
    """One recorded lease client against `client` until it made `renewals` keepalive calls."""
    h = History()
    wl = Workload(["memory:0"], h, random.Random(7), WorkloadConfig(lease_ttl=3))

    def same_client(endpoints: Sequence[str]) -> MemoryRegistryClient:
        return client

    wl._client = same_client  # type: ignore[method-assign,assignment]
    stop = asyncio.Event()
    task = asyncio.create_task(wl.lease_client(0, stop))

    async def renewed() -> None:
        while sum(op.kind == "lease_keepalive" and op.ret is not None for op in h.ops) < renewals:
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(renewed(), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return h


async def test_a_lease_lost_before_its_ttl_is_flagged() -> None:
    h = await _run_lease_client(_LosesLeases(), renewals=1)
    assert h.violations, [(op.kind, op.output) for op in h.ops]
    assert all("before its TTL ran out" in v or "before the TTL ran out" in v
               for v in h.violations), h.violations


async def test_a_lease_kept_alive_is_not_flagged() -> None:
    # The memory client's clock never moves here, so no lease can expire: nothing to flag.
    h = await _run_lease_client(MemoryRegistryClient(), renewals=3)
    assert h.violations == []
    assert [op.output for op in h.ops if op.kind == "lease_keepalive"][:3] == [3, 3, 3]
