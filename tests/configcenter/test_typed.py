"""`dataclass_parser`: the gateway's settings shape, defaults, type checks, unknown keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from raftreg.configcenter import dataclass_parser

pytestmark = pytest.mark.timeout(10)


@dataclass(frozen=True)
class RateLimit:
    rps: float = 100.0
    burst: int = 20


@dataclass(frozen=True)
class Breaker:
    failure_rate: float = 0.5
    window_s: float = 10.0
    min_calls: int = 20
    open_for_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate {self.failure_rate} not in (0, 1]")


@dataclass(frozen=True)
class Balancer:
    policy: Literal["round_robin", "weighted_random", "least_loaded"] = "round_robin"


@dataclass(frozen=True)
class Gateway:
    ratelimit: RateLimit = RateLimit()
    breaker: Breaker = Breaker(min_calls=50)
    balancer: Balancer = Balancer()
    routes: list[str] = field(default_factory=list)
    zones: tuple[str, ...] = ()
    headers: dict[str, int] = field(default_factory=dict)
    owner: str | None = None
    extra: Any = None


@dataclass(frozen=True)
class Required:
    name: str
    port: int
    debug: bool = False


@dataclass(frozen=True)
class Outer:
    inner: Required  # a section without a default


parse = dataclass_parser(Gateway)


def test_the_gateway_shape() -> None:
    cfg = parse(
        {
            "ratelimit.rps": 50,
            "ratelimit.burst": 10,
            "breaker.failure_rate": 0.25,
            "breaker.window_s": 30,
            "breaker.open_for_s": 2.5,
            "balancer.policy": "least_loaded",
            "routes": ["/a", "/b"],
            "zones": ["z1"],
            "headers": {"x": 1},
            "owner": "team",
            "extra": {"anything": [1]},
        }
    )
    assert cfg.ratelimit == RateLimit(rps=50.0, burst=10)
    assert isinstance(cfg.ratelimit.rps, float) and isinstance(cfg.breaker.window_s, float)
    # Missing breaker.min_calls comes from the section's default instance (50), not Breaker's.
    assert cfg.breaker == Breaker(failure_rate=0.25, window_s=30.0, min_calls=50, open_for_s=2.5)
    assert cfg.balancer.policy == "least_loaded"
    assert (cfg.routes, cfg.zones, cfg.headers, cfg.owner) == (["/a", "/b"], ("z1",), {"x": 1},
                                                               "team")
    assert cfg.extra == {"anything": [1]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.owner = "x"  # type: ignore[misc]


def test_missing_settings_take_the_defaults() -> None:
    assert parse({}) == Gateway()
    assert parse({}).breaker.min_calls == 50
    assert parse({"owner": None}).owner is None
    assert dataclass_parser(Required)({"name": "a", "port": 1}) == Required("a", 1)
    assert dataclass_parser(Outer)({"inner.name": "a", "inner.port": 2}).inner.port == 2


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"ratelimit.rps": "fast"}, "ratelimit.rps: expected float, got str 'fast'"),
        ({"ratelimit.rps": True}, "ratelimit.rps: expected float, got bool True"),
        ({"ratelimit.burst": 1.5}, "ratelimit.burst: expected int, got float 1.5"),
        ({"balancer.policy": "random"}, "balancer.policy: expected one of"),
        ({"routes": "/a"}, "routes: expected a list, got str"),
        ({"routes": ["/a", 2]}, "routes: list item: expected str, got int 2"),
        ({"headers": {"x": "1"}}, "headers: object member: expected int"),
        ({"owner": 5}, "owner: expected str, got int 5 or expected null"),
        ({"ratelimit.rsp": 5}, "unknown setting 'ratelimit.rsp'"),
        ({"timeout": 5}, "unknown setting 'timeout'"),
        ({"ratelimit": {"rps": 5}}, "'ratelimit' is a section: set ratelimit.<name> instead"),
        ({"owner.name": "x"}, "unknown setting 'owner.name' ('owner' is not a section)"),
        ({"breaker.failure_rate": 2}, "breaker: failure_rate 2.0 not in (0, 1]"),
    ],
)
def test_invalid_settings_raise_value_error(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as e:
        parse(settings)
    assert problem in str(e.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as e:
        dataclass_parser(Required)({"port": "80", "debug": 1, "nope": 0})
    text = str(e.value)
    for problem in ("unknown setting 'nope'", "port: expected int", "debug: expected bool",
                    "missing setting 'name'"):
        assert problem in text
    with pytest.raises(ValueError, match=r"missing setting 'inner\.name'"):
        dataclass_parser(Outer)({"inner.port": 1})


def test_unsupported_classes_are_refused_when_the_parser_is_made() -> None:
    @dataclass
    class Mutable:
        a: int = 1

    @dataclass(frozen=True)
    class Odd:
        a: set[int] = frozenset()  # type: ignore[assignment]

    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        dataclass_parser(Mutable)
    with pytest.raises(TypeError, match="not a dataclass"):
        dataclass_parser(int)
    with pytest.raises(TypeError, match="unsupported setting type"):
        dataclass_parser(Odd)
