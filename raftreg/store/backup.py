"""The backup file format (`raftreg snapshot save` / `restore`): a store snapshot with a version
and a checksum. Pure: bytes in, bytes out.

A backup is one msgpack map: {"magic": "raftreg-backup", "format": 1, "cluster": name,
"revision": R, "created_at_ms": T, "sha256": digest of "state", "state": store snapshot bytes}.
`decode_backup` refuses, with `InvalidArgument` and a message saying which, anything that is not
msgpack or not a raftreg backup (foreign), an unknown format version, a checksum mismatch
(corrupt or truncated), and a state the store cannot restore. Never pickle.

Served under etcd's Maintenance.Snapshot the same map is framed as etcd frames its bbolt file
(`with_etcd_trailer`): zero-padded to a multiple of 512 bytes, then the SHA-256 of what
precedes it, which `etcdctl snapshot save` checks. `decode_backup` takes both framings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from raftreg.errors import InvalidArgument
from raftreg.store.store import Store

BACKUP_MAGIC = "raftreg-backup"
BACKUP_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Backup:
    cluster: str
    revision: int
    created_at_ms: int
    sha256: str
    state: bytes


def encode_backup(state: bytes, *, cluster: str, revision: int, created_at_ms: int) -> bytes:
    return bytes(msgpack.packb({
        "magic": BACKUP_MAGIC,
        "format": BACKUP_FORMAT,
        "cluster": cluster,
        "revision": revision,
        "created_at_ms": created_at_ms,
        "sha256": hashlib.sha256(state).hexdigest(),
        "state": state,
    }))


ETCD_PAGE = 512
_SHA = hashlib.sha256().digest_size


def with_etcd_trailer(blob: bytes) -> bytes:
    """`blob` zero-padded to a multiple of 512 bytes, followed by the SHA-256 of the padded
    bytes: the length etcd's snapshot client checks for (size % 512 == 32)."""
    padded = blob + bytes(-len(blob) % ETCD_PAGE)
    return padded + hashlib.sha256(padded).digest()


def _strip_etcd_trailer(blob: bytes) -> bytes:
    """The msgpack map inside an etcd-framed file (unchanged if `blob` is not etcd-framed);
    raises on a trailer that does not match."""
    if len(blob) % ETCD_PAGE != _SHA or blob[:1] != b"\x87":  # a 7-entry msgpack map
        return blob
    body, digest = blob[:-_SHA], blob[-_SHA:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidArgument("corrupt raftreg backup (etcd trailer checksum mismatch)")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(body))
    unpacker.feed(body)
    try:
        unpacker.skip()
    except Exception:
        raise InvalidArgument("not a raftreg backup (not msgpack, or truncated)") from None
    end = unpacker.tell()
    if body[end:].strip(b"\0"):
        raise InvalidArgument("corrupt raftreg backup (data after the backup)")
    return body[:end]


def decode_backup(blob: bytes) -> Backup:
    """The backup in `blob` (either framing), verified; the state is checked by restoring it
    into a scratch store."""
    try:
        doc = msgpack.unpackb(_strip_etcd_trailer(blob), raw=False, strict_map_key=True)
    except InvalidArgument:
        raise
    except Exception:
        raise InvalidArgument("not a raftreg backup (not msgpack, or truncated)") from None
    if not isinstance(doc, dict) or doc.get("magic") != BACKUP_MAGIC:
        raise InvalidArgument("not a raftreg backup (foreign file)")
    if doc.get("format") != BACKUP_FORMAT:
        raise InvalidArgument(f"unsupported backup format {doc.get('format')!r}")
    state, digest = doc.get("state"), doc.get("sha256")
    cluster, revision, created = doc.get("cluster"), doc.get("revision"), doc.get("created_at_ms")
    if not (isinstance(state, bytes) and isinstance(digest, str) and isinstance(cluster, str)
            and isinstance(revision, int) and isinstance(created, int)):
        raise InvalidArgument("corrupt raftreg backup (missing or mistyped fields)")
    if hashlib.sha256(state).hexdigest() != digest:
        raise InvalidArgument("corrupt raftreg backup (checksum mismatch)")
    scratch = Store()
    scratch.restore(state)
    if scratch.revision != revision:
        raise InvalidArgument(
            f"corrupt raftreg backup (header revision {revision}, state {scratch.revision})")
    return Backup(cluster, revision, created, digest, state)
