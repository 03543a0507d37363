"""Small helpers shared by the store tests."""

from __future__ import annotations

from raftreg.common.types import Event, KeyValue, Put, Range
from raftreg.store import Command, Failure, Request, Result, Store


def run(store: Store, command: Command, **request: int) -> Result:
    """Apply one command and return its result."""
    result, _ = store.apply(Request(command, **request))
    return result


def run_events(store: Store, command: Command, **request: int) -> tuple[Result, list[Event]]:
    return store.apply(Request(command, **request))


def put(store: Store, key: bytes, value: bytes = b"v", lease: int = 0) -> Result:
    result = run(store, Put(key, value, lease=lease))
    assert not isinstance(result, Failure), result
    return result


def get(store: Store, key: bytes, revision: int = 0) -> KeyValue | None:
    kvs = store.range(Range(key, revision=revision)).kvs
    assert len(kvs) <= 1
    return kvs[0] if kvs else None


def keys(
    store: Store, key: bytes = b"", range_end: bytes = b"\0", revision: int = 0
) -> list[bytes]:
    return [kv.key for kv in store.range(Range(key, range_end, revision=revision)).kvs]


def failure(result: Result, kind: str) -> Failure:
    assert isinstance(result, Failure), result
    assert result.kind == kind, result
    return result
