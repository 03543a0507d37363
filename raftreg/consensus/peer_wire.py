"""raftreg's raft peer wire, as pure functions and values: framing constants, the handshake
messages, the key schedule, the per-direction AEAD `Session`, and the strict check of every
decoded message (`check_message`). No sockets, no PySyncObj, no clock: peer.py's connections
call these on the tick thread; the tests call them directly.

Wire, both directions: ``frame = u32 big-endian length | body``.

Handshake (bodies in clear, each at most `PRE_AUTH_MAX` bytes; the initiator is the member with
the larger address, as in PySyncObj)::

    I -> A  HELLO      MAGIC "H" | n_i (32 random bytes) | u8 len | addr_I | u8 len | addr_A
    A -> I  CHALLENGE  MAGIC "C" | n_a (32 random bytes)
    I -> A  PROOF      MAGIC "P" | HMAC-SHA256(k_auth, "initiator" | HELLO | CHALLENGE)
    A -> I  PROOF      MAGIC "A" | HMAC-SHA256(k_auth, "acceptor"  | HELLO | CHALLENGE)

The acceptor answers HELLO only if addr_A is its own address and addr_I a member of its current
configuration (no read-only nodes, no admin messages); the initiator proves the secret first, so
the acceptor never hands an unauthenticated party something to guess the secret against. Both
proofs bind both nonces and both addresses (no replay, no reflection, no redirection).
`k_auth` and the session keys come from `k_master = PBKDF2-HMAC-SHA256(secret, 100,000
rounds)` (derived once per process; slows down guessing a weak secret from a recorded
handshake) through HKDF-SHA256 with distinct labels; each session has two keys (initiator to
acceptor, acceptor to initiator) salted with SHA-256(HELLO | CHALLENGE).

After the handshake every body is AES-256-GCM(k_direction, nonce = 96-bit message counter,
aad = the 4-byte length) over msgpack. A frame is opened (authenticated) before a single byte of
it is parsed; the implicit counter makes a replayed, reordered, dropped or reflected frame fail.
Decoding is strict (no extension types, bounded sizes, tuples for arrays, str keys) and every
message is checked against the shape SyncObj expects (`check_message`) before SyncObj sees it.
Every violation raises `ProtocolError`.

Limits: a body announced larger than `PRE_AUTH_MAX` before authentication, or `FRAME_MAX`
after, closes the connection before it is read; at most `MAX_PENDING` connections may be in
their handshake, each for at most `HANDSHAKE_TIMEOUT_S` (enforced by peer.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from raftreg.consensus.commands import CommandError, check_entry_command

MAGIC = b"RRP1"  # raftreg raft peer protocol, version 1
NONCE_BYTES = 32
MAC_BYTES = 32
TAG_BYTES = 16
PRE_AUTH_MAX = 1024  # largest handshake body
FRAME_MAX = 64 << 20  # largest body after authentication (a log entry is < 16 MiB)
HANDSHAKE_TIMEOUT_S = 5.0
MAX_PENDING = 64  # incoming connections in their handshake at once
KDF_ROUNDS = 100_000
_KDF_SALT = b"raftreg raft peer v1 master key"

# Handshake body kinds (after MAGIC) and proof labels; public for tests and tools.
HELLO, CHALLENGE, PROOF_I, PROOF_A = b"H", b"C", b"P", b"A"
LABEL_I, LABEL_A = b"initiator", b"acceptor"


class ProtocolError(Exception):
    """A peer broke the protocol; its connection is closed."""


# ------------------------------------------------------------------------------------ crypto


@functools.lru_cache(maxsize=4)
def _master_key(secret: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_KDF_SALT, iterations=KDF_ROUNDS)
    return kdf.derive(secret)


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


class PeerKeys:
    """The keys one cluster secret gives; immutable, shared by every connection."""

    def __init__(self, secret: str) -> None:
        master = _master_key(secret.encode("utf-8"))
        self._master = master
        self._auth = _hkdf(master, None, b"raftreg raft peer v1 handshake proof")

    def proof(self, label: bytes, transcript: bytes) -> bytes:
        return hmac.new(self._auth, label + transcript, hashlib.sha256).digest()

    def session(self, transcript: bytes, *, initiator: bool) -> Session:
        salt = hashlib.sha256(transcript).digest()
        i2a = _hkdf(self._master, salt, b"raftreg raft peer v1 initiator to acceptor")
        a2i = _hkdf(self._master, salt, b"raftreg raft peer v1 acceptor to initiator")
        return Session(i2a, a2i) if initiator else Session(a2i, i2a)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "little")


_UNPACK: dict[str, Any] = {
    "use_list": False,  # tuples, as PySyncObj's entries and snapshot chunks are
    "raw": False,
    "strict_map_key": True,
    "max_str_len": 1024,
    "max_bin_len": FRAME_MAX,
    "max_array_len": 1 << 23,
    "max_map_len": 32,
    "max_ext_len": 0,
}


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code}")


class Session:
    """One authenticated connection's AEAD state: a key and a message counter per direction.
    Nonces are the counters, so they never repeat under a key (a key lives for one connection,
    derived from that connection's fresh nonces)."""

    def __init__(self, tx_key: bytes, rx_key: bytes) -> None:
        self._tx = AESGCM(tx_key)
        self._rx = AESGCM(rx_key)
        self._tx_n = 0
        self._rx_n = 0

    def seal(self, message: object) -> bytes:
        """One complete frame carrying `message` (msgpack-encodable)."""
        return self.seal_bytes(msgpack.packb(message, use_bin_type=True))

    def seal_bytes(self, plain: bytes) -> bytes:
        """One complete frame carrying `plain` as its (already encoded) body."""
        n = len(plain) + TAG_BYTES
        if n > FRAME_MAX:
            raise ProtocolError(f"message of {n} bytes exceeds the frame limit {FRAME_MAX}")
        header = n.to_bytes(4, "big")
        body = self._tx.encrypt(_nonce(self._tx_n), plain, header)
        self._tx_n += 1
        return header + body

    def open(self, header: bytes, body: bytes) -> dict[str, Any]:
        """Authenticate and decode the next frame from the peer; `ProtocolError` if it was
        not sealed by the peer's session key as its next frame, or is not a raft message."""
        try:
            plain = self._rx.decrypt(_nonce(self._rx_n), body, header)
        except InvalidTag:
            raise ProtocolError("a frame failed authentication") from None
        self._rx_n += 1
        try:
            message = msgpack.unpackb(plain, ext_hook=_no_ext, **_UNPACK)
        except Exception as e:
            raise ProtocolError(f"undecodable frame ({type(e).__name__}: {e})") from None
        return check_message(message)


# ------------------------------------------------------------------------------------ messages


def _is_int(v: object) -> bool:
    return type(v) is int and 0 <= v < 1 << 63


def _is_opt_int(v: object) -> bool:
    return v is None or _is_int(v)


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_reason(v: object) -> bool:
    return type(v) is str and len(v) <= 200


def _check_entries(v: object) -> bool:
    if type(v) is not tuple:
        return False
    for e in v:
        if not (type(e) is tuple and len(e) == 3 and _is_int(e[1]) and _is_int(e[2])):
            return False
        check_entry_command(e[0])
    return True


def _check_serialized(v: object) -> bool:
    # PySyncObj's snapshot chunk: (bytes of the dump file, isFirst, isLast); None when it has
    # nothing to send. (It also sends False after a read error, which its own receiver cannot
    # handle; we never produce it: `check_message` refuses it.)
    return v is None or (
        type(v) is tuple and len(v) == 3 and type(v[0]) is bytes
        and _is_bool(v[1]) and _is_bool(v[2])
    )


def _check_command(v: object) -> bool:
    check_entry_command(v)
    return True


# type -> (required fields, optional fields), each field -> check
_Check = Callable[[object], bool]
_SHAPES: dict[str, tuple[dict[str, _Check], dict[str, _Check]]] = {
    "request_vote": ({"term": _is_int, "last_log_index": _is_int, "last_log_term": _is_int}, {}),
    "response_vote": ({"term": _is_int}, {}),
    "append_entries": (
        {"term": _is_int, "commit_index": _is_int},
        {"entries": _check_entries, "prevLogIdx": _is_opt_int, "prevLogTerm": _is_opt_int,
         "serialized": _check_serialized, "read_seq": _is_int},
    ),
    "next_node_idx": (
        {"next_node_idx": _is_int, "reset": _is_bool, "success": _is_bool}, {"read_seq": _is_int}
    ),
    # raftreg's ReadIndex (read_index.py): a follower asks the leader for a read index
    "read_index": ({"id": _is_int}, {}),
    "read_index_resp": ({"id": _is_int}, {"index": _is_int, "error": _is_reason}),
    "apply_command": ({"command": _check_command}, {"request_id": _is_int}),
    "apply_command_response": (
        {"request_id": _is_int}, {"error": _is_int, "log_idx": _is_int, "log_term": _is_int}
    ),
    "timeout_now": ({"term": _is_int}, {}),
}


def check_message(message: object) -> dict[str, Any]:
    """`message` if it has exactly the shape of a raft message PySyncObj 0.3.17 sends (minus
    what raftreg never sends: chunked entries, utility and read-only traffic; plus raftreg's
    read rounds: `read_seq` and the `read_index` messages); else
    `ProtocolError`. SyncObj indexes these dicts without checking, so nothing else may pass."""
    if type(message) is not dict:
        raise ProtocolError("a raft message is a map")
    kind = message.get("type")
    shape = _SHAPES.get(kind) if type(kind) is str else None
    if shape is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    required, optional = shape
    try:
        for name, value in message.items():
            if name == "type":
                continue
            check = required.get(name) or optional.get(name)
            if check is None:
                raise ProtocolError(f"{kind}: unexpected field {name!r}")
            if not check(value):
                raise ProtocolError(f"{kind}: bad {name}")
    except CommandError as e:
        raise ProtocolError(f"{kind}: {e}") from None
    missing = required.keys() - message.keys()
    if missing:
        raise ProtocolError(f"{kind}: missing {', '.join(sorted(missing))}")
    if kind == "append_entries":
        has_prev = "prevLogIdx" in message
        if has_prev != ("prevLogTerm" in message) or (
            "serialized" in message and (has_prev or "entries" in message)
        ) or ("entries" in message and not has_prev):
            raise ProtocolError("append_entries: inconsistent fields")
    elif kind == "apply_command_response" and (
        ("error" in message) == ("log_idx" in message or "log_term" in message)
        or ("log_idx" in message) != ("log_term" in message)
    ):
        raise ProtocolError("apply_command_response: either error or log_idx and log_term")
    elif kind == "read_index_resp" and ("error" in message) == ("index" in message):
        raise ProtocolError("read_index_resp: either error or index")
    return message


# ------------------------------------------------------------------------------------ handshake


def hello(n_i: bytes, addr_i: str, addr_a: str) -> bytes:
    a, b = addr_i.encode(), addr_a.encode()
    if len(a) > 255 or len(b) > 255:
        raise ValueError("peer address too long")
    return MAGIC + HELLO + n_i + bytes([len(a)]) + a + bytes([len(b)]) + b


def parse_hello(body: bytes) -> tuple[bytes, str, str]:
    """(n_i, initiator's address, the acceptor's address it meant to reach)."""
    head = len(MAGIC) + 1 + NONCE_BYTES
    if len(body) < head + 2 or body[: len(MAGIC) + 1] != MAGIC + HELLO:
        raise ProtocolError("not a raftreg peer hello (another program, or an older raftreg?)")
    n_i = body[len(MAGIC) + 1 : head]
    la = body[head]
    if len(body) < head + 2 + la:
        raise ProtocolError("malformed hello")
    lb = body[head + 1 + la]
    if len(body) != head + 2 + la + lb:
        raise ProtocolError("malformed hello")
    try:
        addr_i = body[head + 1 : head + 1 + la].decode()
        addr_a = body[head + 2 + la :].decode()
    except UnicodeDecodeError:
        raise ProtocolError("malformed hello") from None
    return n_i, addr_i, addr_a


def _expect(body: bytes, kind: bytes, size: int, what: str) -> bytes:
    if len(body) != len(MAGIC) + 1 + size or body[: len(MAGIC) + 1] != MAGIC + kind:
        raise ProtocolError(f"expected the handshake's {what}")
    return body[len(MAGIC) + 1 :]

