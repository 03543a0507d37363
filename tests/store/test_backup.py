"""The backup file format: round trip, and every kind of bad file refused with a clear reason."""

from __future__ import annotations

import hashlib
import json

import msgpack
import pytest

from raftreg.errors import InvalidArgument
from raftreg.store import Store
from raftreg.store.backup import decode_backup, encode_backup, with_etcd_trailer
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


def test_etcd_framing_is_what_etcdctl_checks_and_reads_back() -> None:
    _, blob = sample()
    framed = with_etcd_trailer(blob)
    # etcd's snapshot client: size % 512 == sha256 size, the digest of what precedes it
    assert len(framed) % 512 == 32
    assert hashlib.sha256(framed[:-32]).digest() == framed[-32:]
    assert decode_backup(framed) == decode_backup(blob)
    flipped = bytearray(framed)
    flipped[10] ^= 1
    with pytest.raises(InvalidArgument, match="etcd trailer checksum mismatch"):
        decode_backup(bytes(flipped))
    body = framed[:-32]
    junk = body[:-1] + b"x"
    with pytest.raises(InvalidArgument, match="data after the backup"):
        decode_backup(junk + hashlib.sha256(junk).digest())
