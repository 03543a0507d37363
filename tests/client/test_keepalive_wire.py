"""`RenewalWire`: one lease per request until the server's first answer announced `batches`,
then up to MAX_KEEPALIVE_IDS per request; etcd's shape to any other server."""

from __future__ import annotations

import pytest

from raftreg.client.etcd.pb import etcdv3_pb2 as etcd_pb
from raftreg.common.keepalive_wire import RenewalWire
from raftreg.config import MAX_KEEPALIVE_IDS
from raftreg.errors import Unavailable
from raftreg.pb import raftreg_pb2 as pb

Req, Resp = pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse


def ids_of(reqs: list[object]) -> list[list[int]]:
    return [list(r.IDs) or [r.ID] for r in reqs]  # type: ignore[attr-defined]


def test_holds_renewals_until_the_first_answer_then_batches() -> None:
    w = RenewalWire(Req)
    assert ids_of(w.encode([1, 2, 3])) == [[1]]
    assert w.encode([4]) == [] and w.encode([]) == []
    pairs, held = w.decode(Resp(ID=1, TTL=9, batches=True))
    assert pairs == [(1, 9)]
    assert ids_of(held) == [[2, 3, 4]]
    many = list(range(1, 2 * MAX_KEEPALIVE_IDS + 2))
    assert [len(x) for x in ids_of(w.encode(many))] == [MAX_KEEPALIVE_IDS, MAX_KEEPALIVE_IDS, 1]
    one = w.encode([7])
    assert one[0].ID == 7 and not one[0].IDs  # type: ignore[attr-defined]
    assert w.decode(Resp(IDs=[5, 6], TTLs=[9, 0]))[0] == [(5, 9), (6, 0)]


def test_a_server_that_does_not_announce_batches_gets_one_lease_per_request() -> None:
    w = RenewalWire(Req)
    w.encode([1, 2, 3])
    pairs, held = w.decode(Resp(ID=1, TTL=9))  # etcd, or raftreg before IDs
    assert pairs == [(1, 9)] and ids_of(held) == [[2], [3]]
    assert ids_of(w.encode([4, 5])) == [[4], [5]]


def test_etcd_messages_from_the_start() -> None:
    w = RenewalWire(etcd_pb.LeaseKeepAliveRequest, batches=False)
    assert [r.ID for r in w.encode([1, 2])] == [1, 2]  # type: ignore[attr-defined]
    assert w.decode(etcd_pb.LeaseKeepAliveResponse(ID=1, TTL=5)) == ([(1, 5)], [])


def test_an_answer_whose_ids_and_ttls_do_not_pair_up_is_refused() -> None:
    w = RenewalWire(Req, batches=True)
    with pytest.raises(Unavailable):
        w.decode(Resp(IDs=[1, 2], TTLs=[5]))
