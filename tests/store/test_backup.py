"""The backup file format: round trip, and every kind of bad file refused with a clear reason."""

from __future__ import annotations

import json

import msgpack
import pytest

from raftreg.errors import InvalidArgument
from raftreg.store import Store
from raftreg.store.backup import decode_backup, encode_backup
from tests.store.helpers import put


def sample() -> tuple[Store, bytes]:
    s = Store()
    for i in range(20):
        put(s, f"k{i}".encode(), b"v" * i)
    return s, encode_backup(s.snapshot(), cluster="c1", revision=s.revision, created_at_ms=7)


def test_round_trip() -> None:
    s, blob = sample()
    b = decode_backup(blob)
    assert (b.cluster, b.revision, b.created_at_ms) == ("c1", s.revision, 7)
    t = Store()
    t.restore(b.state)
    assert t.hash() == s.hash() and t.revision == s.revision


def flip(state: object) -> bytes:
    assert isinstance(state, bytes)
    mid = len(state) // 2
    return state[:mid] + bytes([state[mid] ^ 0xFF]) + state[mid + 1:]


def doc(blob: bytes) -> dict[str, object]:
    d = msgpack.unpackb(blob)
    assert isinstance(d, dict)
    return d


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda b: b[: len(b) // 2], "not msgpack, or truncated"),
        (lambda b: json.dumps({"a": 1}).encode(), "not a raftreg backup"),
        (lambda b: b"\x80\x04\x95pickle", "not a raftreg backup"),
        (lambda b: msgpack.packb({**doc(b), "magic": "etcd"}), "foreign"),
        (lambda b: msgpack.packb({**doc(b), "format": 9}), "unsupported backup format 9"),
        (lambda b: msgpack.packb({**doc(b), "revision": "x"}), "mistyped"),
        (lambda b: msgpack.packb({**doc(b), "state": flip(doc(b)["state"])}), "checksum mismatch"),
        (lambda b: msgpack.packb({**doc(b), "revision": 1}), "header revision 1"),
    ],
)
def test_bad_files_are_refused(mangle: object, why: str) -> None:
    _, blob = sample()
    with pytest.raises(InvalidArgument, match=why):
        decode_backup(mangle(blob))  # type: ignore[operator]
