"""Cluster membership and status: one contract for both backends (see conftest)."""

from __future__ import annotations

import pytest

from raftreg.client import RegistryClient
from tests.contract.conftest import Backend, backend_differs

pytestmark = pytest.mark.slow


async def test_member_list_names_three_members_and_one_leader(
    registry: RegistryClient, backend: Backend
) -> None:
    members = await registry.member_list()
    assert len(members) == 3
    assert sum(m.is_leader for m in members) == 1
    assert all(m.name and m.peer_urls and not m.is_learner for m in members)
    urls = sorted(u.removeprefix("http://") for m in members for u in m.client_urls)
    assert urls == sorted(backend.endpoints)
    # raftreg: `connected` = reachable from the answering node; etcd reports no reachability,
    # so the adapter reports a started member (one that published its client URLs).
    assert all(m.connected for m in members)


async def test_status_of_each_endpoint_agrees_on_the_leader(
    registry: RegistryClient, backend: Backend, prefix: str
) -> None:
    w = await registry.put(prefix + "k", "v")
    statuses = [await registry.status(ep) for ep in backend.endpoints]
    ids = {m.id for m in await registry.member_list()}
    assert {s.member_id for s in statuses} == ids
    assert len({s.leader for s in statuses}) == 1 and statuses[0].leader in ids
    assert sum(s.is_leader for s in statuses) == 1
    assert [s.endpoint for s in statuses] == list(backend.endpoints)
    assert all(s.name and s.raft_term > 0 and s.raft_index > 0 for s in statuses)
    leader = next(s for s in statuses if s.is_leader)
    assert leader.revision >= w.revision
    # The server's version: raftreg's own, etcd's release. etcd's Status has no key, lease
    # or watcher counts (the adapter reports 0); raftreg's does.
    assert leader.version.startswith(backend_differs(backend, raftreg="0.", etcd="3.5."))
    assert (leader.keys > 0) is backend_differs(backend, raftreg=True, etcd=False)


async def test_status_of_any_endpoint(registry: RegistryClient, backend: Backend) -> None:
    s = await registry.status()
    assert s.endpoint in backend.endpoints and s.leader != 0 and not s.errors
