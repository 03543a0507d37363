"""Client-side load-balancing policies, pluggable by name.

A `Balancer` is given the live instances with `update()` and asked for one per call with
`pick(key, exclude, load)`: `exclude` holds instance ids not to pick (ejected, or already tried
by this call), `load` the caller's count of outstanding requests per instance id. `pick`
returns None only when every instance is excluded (or there are none).

Policies (`POLICIES`, `make_balancer(name)`):
- `round_robin`: each instance in turn.
- `weighted_round_robin`: nginx's smooth weighted round robin; over any window of
  sum(weights) picks, each instance is chosen exactly `weight` times, interleaved.
- `least_outstanding`: the instance with the fewest outstanding requests per unit of weight;
  ties go round robin.
- `p2c`: power of two choices: two distinct random instances, the less loaded (per weight).
- `consistent_hash`: a hash ring with `weight x replicas` virtual nodes per instance; the same
  key goes to the same instance while it lives, and removing an instance moves only its keys.
  Without a key it picks at random.
Balancers are not thread-safe; use each on one event loop.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Protocol

from raftreg.discovery.instance import Instance
from raftreg.errors import InvalidArgument

_NO_LOAD: Mapping[str, int] = {}


class Balancer(Protocol):
    name: str

    def update(self, instances: Sequence[Instance]) -> None:
        """Replace the set of instances to choose from."""
        ...

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._next = (rng or random.Random()).randrange(1 << 16)

    def update(self, instances: Sequence[Instance]) -> None:
        self._instances = tuple(instances)

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        n = len(self._instances)
        for _ in range(n):
            inst = self._instances[self._next % n]
            self._next += 1
            if inst.id not in exclude:
                return inst
        return None


class SmoothWeightedRoundRobin:
    name = "weighted_round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._current: dict[str, int] = {}

    def update(self, instances: Sequence[Instance]) -> None:
        self._instances = tuple(instances)
        self._current = {i.id: self._current.get(i.id, 0) for i in self._instances}

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        best: Instance | None = None
        total = 0
        cur = self._current
        for inst in self._instances:
            if inst.id in exclude:
                continue
            cur[inst.id] += inst.weight
            total += inst.weight
            if best is None or cur[inst.id] > cur[best.id]:
                best = inst
        if best is not None:
            cur[best.id] -= total
        return best


class LeastOutstanding:
    name = "least_outstanding"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._next = 0

    def update(self, instances: Sequence[Instance]) -> None:
        self._instances = tuple(instances)

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        n = len(self._instances)
        best: Instance | None = None
        best_load = 0.0
        start = self._next
        self._next += 1
        for j in range(n):
            inst = self._instances[(start + j) % n]
            if inst.id in exclude:
                continue
            lo = load.get(inst.id, 0) / inst.weight
            if best is None or lo < best_load:
                best, best_load = inst, lo
        return best


class PowerOfTwoChoices:
    name = "p2c"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._rng = rng or random.Random()

    def update(self, instances: Sequence[Instance]) -> None:
        self._instances = tuple(instances)

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        cands = [i for i in self._instances if i.id not in exclude]
        if len(cands) <= 1:
            return cands[0] if cands else None
        a, b = self._rng.sample(cands, 2)
        la, lb = load.get(a.id, 0) / a.weight, load.get(b.id, 0) / b.weight
        return a if la <= lb else b


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash:
    name = "consistent_hash"

    def __init__(self, rng: random.Random | None = None, *, replicas: int = 64) -> None:
        self._rng = rng or random.Random()
        self._replicas = replicas
        self._instances: tuple[Instance, ...] = ()
        self._points: list[int] = []
        self._owners: list[Instance] = []

    def update(self, instances: Sequence[Instance]) -> None:
        self._instances = tuple(instances)
        ring: list[tuple[int, str, Instance]] = []
        for inst in self._instances:
            for r in range(inst.weight * self._replicas):
                ring.append((_hash64(f"{inst.id}#{r}".encode()), inst.id, inst))
        ring.sort(key=lambda t: (t[0], t[1]))
        self._points = [p for p, _, _ in ring]
        self._owners = [o for _, _, o in ring]

    def pick(
        self,
        key: bytes | None = None,
        *,
        exclude: Container[str] = (),
        load: Mapping[str, int] = _NO_LOAD,
    ) -> Instance | None:
        if not self._points:
            return None
        h = self._rng.getrandbits(64) if key is None else _hash64(key)
        start = bisect.bisect_left(self._points, h)
        n = len(self._points)
        seen: set[str] = set()
        for j in range(n):
            inst = self._owners[(start + j) % n]
            if inst.id in exclude:
                seen.add(inst.id)
                if len(seen) == len(self._instances):
                    return None
                continue
            return inst
        return None


POLICIES: Mapping[str, Callable[[random.Random | None], Balancer]] = {
    RoundRobin.name: RoundRobin,
    SmoothWeightedRoundRobin.name: SmoothWeightedRoundRobin,
    LeastOutstanding.name: LeastOutstanding,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
    ConsistentHash.name: ConsistentHash,
}


def make_balancer(name: str, rng: random.Random | None = None) -> Balancer:
    """A new balancer of policy `name` (one of `POLICIES`); `InvalidArgument` otherwise."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown balancing policy {name!r}; one of {', '.join(sorted(POLICIES))}"
        ) from None
    return factory(rng)
