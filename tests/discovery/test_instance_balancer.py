"""Instance records and balancing policies: pure, fast."""

from __future__ import annotations

import collections
import contextlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.discovery import (
    POLICIES,
    Instance,
    InvalidInstance,
    OutlierDetector,
    decode_instance,
    encode_instance,
    make_balancer,
)
from raftreg.errors import InvalidArgument


def inst(i: str, weight: int = 1, port: int = 1000) -> Instance:
    return Instance("user", i, f"127.0.0.1:{port}", weight=weight)


def test_instance_round_trips_through_json() -> None:
    a = Instance("user", "u-1", "10.0.0.1:8080", weight=3, zone="z1", version="v2",
                 metadata={"k": "v"}, registered_at=12.5)
    b = decode_instance(a.key.encode(), encode_instance(a))
    assert b == a
    assert a.key == "/services/user/u-1"


def test_the_documents_registrations_decode_and_ours_read_as_the_documents() -> None:
    doc = decode_instance(b"/services/user-service/10.0.0.1:8080",
                          b'{"name":"user-service","addr":"10.0.0.1:8080","version":"1.0.0"}')
    assert (doc.service, doc.id, doc.address, doc.version) == (
        "user-service", "10.0.0.1:8080", "10.0.0.1:8080", "1.0.0")
    bare = decode_instance("/services/user", "192.168.1.10:50051")
    assert (bare.service, bare.id, bare.address) == ("user", "192.168.1.10:50051",
                                                     "192.168.1.10:50051")
    assert decode_instance("/services/user/u1", '"10.0.0.3:1"').address == "10.0.0.3:1"
    legacy = decode_instance("/services/user/u1", '{"address":"10.0.0.4:1","weight":2}')
    assert (legacy.address, legacy.weight) == ("10.0.0.4:1", 2)
    # ours: the key ends in the address and the JSON carries the document's three fields
    ours = Instance("user-service", "", "10.0.0.1:8080", version="1.0.0", weight=2)
    assert ours.key == "/services/user-service/10.0.0.1:8080"
    as_json = json.loads(encode_instance(ours))
    assert {k: as_json[k] for k in ("name", "addr", "version")} == {
        "name": "user-service", "addr": "10.0.0.1:8080", "version": "1.0.0"}
    assert as_json["weight"] == 2 and "address" not in as_json


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (b"/services/user/u1", b"{not json", "not JSON"),
        (b"/services/user/u1", b"[1,2]", "not a JSON object"),
        (b"/services/user/u1", b'{"weight":1}', "address is missing"),
        (b"/services/user/u1", b'{"address":"nohost"}', "not host:port"),
        (b"/services/user/u1", b'{"address":"h:99999"}', "not host:port"),
        (b"/services/user/u1", b'{"address":"h:1","weight":0}', "weight"),
        (b"/services/user/u1", b'{"address":"h:1","weight":"2"}', "weight"),
        (b"/services/user/u1", b'{"address":"h:1","metadata":{"a":1}}', "metadata"),
        (b"/services/user/u1/extra", b'{"address":"h:1"}', "is not /services/"),
        (b"/other/user/u1", b'{"address":"h:1"}', "is not under"),
        (b"/services/user/u\xff", b'{"address":"h:1"}', "UTF-8"),
    ],
)
def test_malformed_registrations_are_refused_with_a_reason(
    key: bytes, value: bytes, why: str
) -> None:
    with pytest.raises(InvalidInstance, match=why):
        decode_instance(key, value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.one_of(st.binary(max_size=80), st.dictionaries(
    st.sampled_from(["address", "weight", "zone", "metadata", "registered_at", "x"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=12), st.floats(allow_nan=False),
              st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
).map(lambda d: json.dumps(d).encode())))
def test_decode_raises_only_invalid_instance(key: bytes, value: bytes) -> None:
    with contextlib.suppress(InvalidInstance):
        decode_instance(b"/services/svc/" + key, value)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown balancing policy"):
        make_balancer("fastest")


def spread(policy: str, instances: list[Instance], n: int, **kw: object) -> dict[str, int]:
    b = make_balancer(policy, random.Random(7))
    b.update(instances)
    c: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        p = b.pick(**kw)  # type: ignore[arg-type]
        assert p is not None
        c[p.id] += 1
    return dict(c)


def test_round_robin_is_even() -> None:
    s = spread("round_robin", [inst("a"), inst("b"), inst("c", weight=5)], 300)
    assert s == {"a": 100, "b": 100, "c": 100}


def test_smooth_weighted_round_robin_is_exact_and_interleaved() -> None:
    insts = [inst("a", 1), inst("b", 2), inst("c", 3)]
    b = make_balancer("weighted_round_robin")
    b.update(insts)
    picks = [b.pick() for _ in range(600)]
    for w in range(0, 600, 6):  # every window of sum(weights) picks is exact
        window = collections.Counter(p.id for p in picks[w:w + 6] if p is not None)
        assert window == {"a": 1, "b": 2, "c": 3}
    # nginx's sequence for 1:2:3 — interleaved, the heaviest never three in a row
    assert "".join(p.id for p in picks[:6] if p is not None) == "cbacbc"


def test_weighted_round_robin_skips_excluded_and_keeps_ratio_of_the_rest() -> None:
    s = spread("weighted_round_robin", [inst("a", 1), inst("b", 2), inst("c", 3)], 500,
               exclude={"c"})
    assert abs(s["b"] / s["a"] - 2) < 0.05 and "c" not in s


def test_least_outstanding_picks_the_least_loaded_per_weight() -> None:
    b = make_balancer("least_outstanding")
    b.update([inst("a"), inst("b", weight=4), inst("c")])
    p = b.pick(load={"a": 2, "b": 4, "c": 3})
    assert p is not None and p.id == "b"  # 4/4 = 1 < 2 < 3
    p = b.pick(load={"a": 0, "b": 4, "c": 3})
    assert p is not None and p.id == "a"


def test_p2c_never_picks_the_most_loaded_of_three() -> None:
    b = make_balancer("p2c", random.Random(1))
    b.update([inst("a"), inst("b"), inst("c")])
    load = {"a": 10, "b": 1, "c": 2}
    picks = collections.Counter(b.pick(load=load).id for _ in range(300))  # type: ignore[union-attr]
    assert picks["a"] == 0 and picks["b"] > picks["c"] > 0


def test_consistent_hash_is_stable_and_moves_only_the_removed_instances_keys() -> None:
    insts = [inst(f"i{n}") for n in range(5)]
    b = make_balancer("consistent_hash")
    b.update(insts)
    keys = [f"user-{k}".encode() for k in range(2000)]
    before = {k: b.pick(k).id for k in keys}  # type: ignore[union-attr]
    assert before == {k: b.pick(k).id for k in keys}  # type: ignore[union-attr]
    counts = collections.Counter(before.values())
    assert min(counts.values()) > 2000 / 5 * 0.5  # roughly even
    b.update([i for i in insts if i.id != "i2"])
    after = {k: b.pick(k).id for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "i2" for k in moved)
    assert len(moved) == counts["i2"]
    # excluding an instance sends its keys to the next one on the ring, others stay
    b.update(insts)
    ex = {k: b.pick(k, exclude={"i3"}).id for k in keys}  # type: ignore[union-attr]
    assert all(ex[k] == before[k] for k in keys if before[k] != "i3")


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_returns_none_when_everything_is_excluded(policy: str) -> None:
    b = make_balancer(policy)
    b.update([])
    assert b.pick(b"k") is None
    b.update([inst("a"), inst("b")])
    assert b.pick(b"k", exclude={"a", "b"}) is None
    p = b.pick(b"k", exclude={"a"})
    assert p is not None and p.id == "b"


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_outlier_detector_ejects_after_consecutive_failures_and_returns_after_cool_down() -> None:
    t = Tick()
    od = OutlierDetector(consecutive_failures=3, base_ejection_s=10, max_ejection_s=25, clock=t)
    od.track(["a", "b", "c", "d"])
    od.record("a", False)
    od.record("a", False)
    od.record("a", True)  # a success resets the run
    od.record("a", False)
    od.record("a", False)
    assert not od.is_ejected("a")
    od.record("a", False)
    assert od.ejected() == {"a"}
    t.t = 9.9
    assert od.is_ejected("a")
    t.t = 10.0
    assert not od.is_ejected("a")
    for _ in range(3):
        od.record("a", False)
    assert od.is_ejected("a")  # second ejection: 20 s
    t.t = 29.9
    assert od.is_ejected("a")
    t.t = 30.0
    for _ in range(3):
        od.record("a", False)
    t.t = 54.9  # third: capped at 25 s
    assert od.is_ejected("a")
    t.t = 55.0
    assert not od.is_ejected("a")


def test_outlier_detector_never_ejects_more_than_the_allowed_fraction() -> None:
    t = Tick()
    od = OutlierDetector(consecutive_failures=1, max_ejected_fraction=0.5, clock=t)
    od.track(["a", "b", "c"])
    for i in "abc":
        od.record(i, False)
    assert len(od.ejected()) == 1
    od.track(["x"])
    od.record("x", False)
    assert od.ejected() == frozenset()  # never the only instance
