"""Cluster membership and status: one contract for every backend (see conftest)."""

from __future__ import annotations

import pytest

from raftreg.client import NodeStatus, RegistryClient
from tests.contract.conftest import Backend, backend_differs, process_only, settled

pytestmark = pytest.mark.slow


# Process backends only: three real members and their endpoints; memory is one in-process
# member with no client URL of a real server.
@process_only
async def test_member_list_names_three_members_and_one_leader(
    registry: RegistryClient, backend: Backend
) -> None:
    # Retaken while an election is under way (no member marked leader for a moment).
    members = await settled(registry.member_list,
                            lambda ms: sum(m.is_leader for m in ms) == 1, "one leader")
    assert len(members) == 3
    assert all(m.name and m.peer_urls and not m.is_learner for m in members)
    urls = sorted(u.removeprefix("http://") for m in members for u in m.client_urls)
    assert urls == sorted(backend.endpoints)
    # raftreg: `connected` = reachable from the answering node; etcd reports no reachability,
    # so the adapter reports a started member (one that published its client URLs).
    assert all(m.connected for m in members)


# Process backends only: each real member's status, its Raft term and index; memory has one
# endpoint and no Raft.
@process_only
async def test_status_of_each_endpoint_agrees_on_the_leader(
    registry: RegistryClient, backend: Backend, prefix: str
) -> None:
    w = await registry.put(prefix + "k", "v")

    async def snapshot() -> tuple[list[NodeStatus], set[int]]:
        statuses = [await registry.status(ep) for ep in backend.endpoints]
        return statuses, {m.id for m in await registry.member_list()}

    def agree(snap: tuple[list[NodeStatus], set[int]]) -> bool:
        statuses, ids = snap
        return (len({s.leader for s in statuses}) == 1 and statuses[0].leader in ids
                and sum(s.is_leader for s in statuses) == 1)

    # One call per endpoint: an election between two of them is no disagreement, so the
    # snapshot is retaken as a whole until the endpoints agree (a lasting split still fails).
    statuses, ids = await settled(snapshot, agree, "every endpoint names the same leader")
    assert {s.member_id for s in statuses} == ids
    assert [s.endpoint for s in statuses] == list(backend.endpoints)
    assert all(s.name and s.raft_term > 0 and s.raft_index > 0 for s in statuses)
    leader = next(s for s in statuses if s.is_leader)
    assert leader.revision >= w.revision
    # The server's version: raftreg's own, etcd's release. etcd's Status has no key, lease
    # or watcher counts (the adapter reports 0); raftreg's does.
    assert leader.version.startswith(backend_differs(backend, raftreg="0.", etcd="3.5."))
    assert (leader.keys > 0) is backend_differs(backend, raftreg=True, etcd=False)


async def test_status_of_any_endpoint(registry: RegistryClient, backend: Backend) -> None:
    s = await settled(registry.status, lambda s: s.leader != 0, "a known leader")
    assert s.endpoint in backend.endpoints and not s.errors
