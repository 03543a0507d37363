"""The fault-injection transport on real processes: partitions and drops do what they say."""

from __future__ import annotations

import time

import pytest

from raftreg.client import SyncRegistryClient
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_isolated_leader_is_replaced_and_heal_converges(fcluster: ProcessCluster) -> None:
    c = fcluster
    old = c.wait_leader()
    rest = [n for n in c.names if n != old]
    c.isolate(old)
    new = c.wait_leader(among=rest)
    assert new != old
    # The old leader steps down once it misses the majority (within about an election
    # timeout). A status call that times out (None) says nothing either way: ask again.
    deadline = time.monotonic() + 10
    while (st := c.status(old, timeout=5.0)) is None or st.leader != 0:
        assert time.monotonic() < deadline, f"{old} still names a leader: {st}"
        time.sleep(0.05)
    with SyncRegistryClient([c.client[n] for n in rest], timeout=2.0) as cl:
        rev = cl.put("/t/k", "v").revision
    st = c.status(old, timeout=5.0)
    assert st is not None and st.header.revision < rev
    c.heal()
    st = c.wait_converged()
    assert st.header.revision >= rev


def test_one_way_partition_and_drops(fcluster: ProcessCluster) -> None:
    c = fcluster
    leader = c.wait_leader()
    follower = next(n for n in c.names if n != leader)
    c.partition(follower, leader, one_way=True)  # the follower's acks are lost
    c.drop_rate(0.2)
    c.delay(10)
    with SyncRegistryClient(c.endpoints, timeout=2.0, retry_budget=10.0) as cl:
        for i in range(10):
            cl.put(f"/t/{i}", "v")  # a majority (leader + the other follower) still commits
    c.heal()
    assert c.wait_converged().header.revision >= 10
