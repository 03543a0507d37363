"""raftreg's raft peer protocol under PySyncObj: mutual proof of the cluster secret, then
authenticated, encrypted msgpack frames. Nothing a peer sends is ever unpickled.

PySyncObj 0.3.17's own protocol pickles every message (and, with a password, seals it with
Fernet), accepts read-only nodes and admin ("utility") commands on the same port, and lets any
sender announce a frame of up to 2 GiB. `PeerTransport` replaces its wire, not its logic: it
subclasses PySyncObj's TCPTransport, TcpConnection and TcpServer (overriding their name-mangled
private methods, no fork) and hands SyncObj the same message dicts it always got.

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
Any failure closes the connection and is logged once for that connection (at most
`_RefusalLog.BURST` lines a minute per remote host; the rest are counted).

Limits: a body announced larger than `PRE_AUTH_MAX` before authentication, or `FRAME_MAX`
after, closes the connection before it is read; at most `MAX_PENDING` connections may be in
their handshake, each for at most `HANDSHAKE_TIMEOUT_S`.

Outbox (the durable point's half in the transport): `send()` never writes to a socket, it
queues. `flush_outbox()` first calls the `before_send` hook once (raft.py sets it up to sync the
journal: term, vote and entries are on disk before any message that reflects them leaves), then
seals and writes every queued message in order. PySyncObj's tick calls `flush_outbox()` at the
end of this transport's tick callback; the raft layer calls it again after the poll. Handshake
frames carry no raft state and are written at once.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from raftreg.consensus.commands import CommandError, check_entry_command

log = logging.getLogger("raftreg.consensus.peer")

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
         "serialized": _check_serialized},
    ),
    "next_node_idx": ({"next_node_idx": _is_int, "reset": _is_bool, "success": _is_bool}, {}),
    "apply_command": ({"command": _check_command}, {"request_id": _is_int}),
    "apply_command_response": (
        {"request_id": _is_int}, {"error": _is_int, "log_idx": _is_int, "log_term": _is_int}
    ),
    "timeout_now": ({"term": _is_int}, {}),
}


def check_message(message: object) -> dict[str, Any]:
    """`message` if it has exactly the shape of a raft message PySyncObj 0.3.17 sends (minus
    what raftreg never sends: chunked entries, utility and read-only traffic); else
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


@dataclass(slots=True)
class _Handshake:
    initiator: bool
    deadline: float
    node: Any = None  # the member at the other end (initiator: known; acceptor: from HELLO)
    hello: bytes = b""
    transcript: bytes = b""  # HELLO | CHALLENGE once both are known
    proved: bool = False  # initiator: our proof went out


# ------------------------------------------------------------------------------------ refusals


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


@dataclass(slots=True)
class _RefusalLog:
    """One warning per refused connection, at most BURST a minute per remote host (a
    misconfigured peer retries every few hundred ms); the rest are counted and reported with
    the next line logged for that host."""

    BURST = 20
    WINDOW_S = 60.0
    windows: dict[str, _Window] = field(default_factory=dict)

    def __call__(self, where: str, host: str, reason: str) -> None:
        now = time.monotonic()
        w = self.windows.get(host)
        note = ""
        if w is None or now - w.start > self.WINDOW_S:
            if w is not None and w.suppressed:
                note = f" ({w.suppressed} earlier refusals for {host} were not logged)"
            if len(self.windows) > 1024:
                self.windows.clear()
            w = self.windows[host] = _Window(now)
        if w.logged >= self.BURST:
            w.suppressed += 1
            return
        w.logged += 1
        log.warning("raft peer connection %s refused: %s%s", where, reason, note)


# ------------------------------------------------------------------------------------ connection


class PeerConn(TcpConnection):  # type: ignore[misc]
    """PySyncObj's non-blocking TCP connection with our framing. Before authentication it
    yields handshake bodies (bytes); after, checked raft message dicts. `send` is not used:
    frames are written with `write` (already sealed) or `write_handshake`."""

    _TcpConnection__readBuffer: bytes  # TcpConnection's private buffers (name-mangled)
    _TcpConnection__writeBuffer: bytes

    def __init__(self, *args: Any, remote: str, outgoing: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remote = remote  # outgoing: the member's raft address; incoming: "ip:port"
        self.outgoing = outgoing
        self.session: Session | None = None
        self.hs: _Handshake | None = None
        self.refused = False
        self.on_refuse: Callable[[PeerConn, str], None] | None = None

    def send(self, message: Any) -> None:
        raise RuntimeError("PeerConn.send is not used: frames go through PeerTransport")

    def write(self, data: bytes) -> None:
        self._TcpConnection__writeBuffer += data
        self._TcpConnection__trySendBuffer()

    def write_handshake(self, body: bytes) -> None:
        assert len(body) <= PRE_AUTH_MAX
        self.write(len(body).to_bytes(4, "big") + body)

    def refuse(self, reason: str) -> None:
        """Log (once for this connection) and close."""
        if self.state == CONNECTION_STATE.DISCONNECTED or self.refused:
            return
        self.refused = True
        if self.on_refuse is not None:
            self.on_refuse(self, reason)
        self.disconnect()

    def disconnect(self) -> None:
        super().disconnect()  # runs the transport's disconnected callback with our state intact
        self.session = None
        self.hs = None
        self.refused = False

    def _TcpConnection__processRead(self) -> bool:
        # Stop reading once a whole frame must be buffered (the poller is level-triggered, so
        # the rest is read after it was parsed): memory stays bounded by the frame limits.
        if len(self._TcpConnection__readBuffer) > 4 + (
            FRAME_MAX if self.session is not None else PRE_AUTH_MAX
        ):
            return False
        return bool(super()._TcpConnection__processRead())

    def _TcpConnection__processParseMessage(self) -> Any:
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[:4], "big")
        session = self.session
        limit = FRAME_MAX if session is not None else PRE_AUTH_MAX
        if n > limit:
            self.refuse(
                f"a frame of {n} bytes was announced "
                f"{'after' if session is not None else 'before'} authentication (limit {limit})"
                + ("" if session is not None else "; not a raftreg v1 peer")
            )
            return None
        if len(buf) - 4 < n:
            return None
        header, body = buf[:4], buf[4 : 4 + n]
        self._TcpConnection__readBuffer = buf[4 + n :]
        if session is None:
            return body
        try:
            return session.open(header, body)
        except ProtocolError as e:
            self.refuse(str(e))
            return None


class PeerServer(TcpServer):  # type: ignore[misc]
    """PySyncObj's listening socket, accepting `PeerConn`s (TcpServer hard-codes its class)."""

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, addr = self._TcpServer__socket.accept()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self._TcpServer__sendBufferSize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                self._TcpServer__recvBufferSize)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                conn = PeerConn(
                    poller=self._TcpServer__poller,
                    socket=sock,
                    timeout=self._TcpServer__connectionTimeout,
                    sendBufferSize=self._TcpServer__sendBufferSize,
                    recvBufferSize=self._TcpServer__recvBufferSize,
                    keepalive=self._TcpServer__keepalive,
                    remote=f"{addr[0]}:{addr[1]}",
                    outgoing=False,
                )
                self._TcpServer__onNewConnectionCallback(conn)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.unbind()
                    return
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()


# ------------------------------------------------------------------------------------ transport


class PeerTransport(TCPTransport):  # type: ignore[misc]
    """PySyncObj's TCP transport speaking raftreg's peer protocol (module docstring).

    Contract with the SyncObj that constructs it: `syncObj._peer_secret` (str) is set before
    `SyncObj.__init__`; the node is a voting member (no read-only nodes). All methods run on
    the tick thread. A node counts as connected (SyncObj's `onNodeConnected`) only once both
    sides proved the secret; `send()` to a node without an open session returns False and
    drops the message, as PySyncObj's does for a dead connection.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        if selfNode is None:
            raise ValueError("raftreg has no read-only raft nodes")
        self._keys = PeerKeys(syncObj._peer_secret)
        self._outbox: list[tuple[Any, dict[str, Any]]] = []
        self._poisoned = False
        self._destroying = False
        self._refusals = _RefusalLog()
        # The durable point (see module docstring); raft.py may reassign it.
        self.before_send: Callable[[], None] | None = getattr(syncObj, "durable_point", None)
        super().__init__(syncObj, selfNode, otherNodes)

    # -------------------------------------------------------------- construction (class swap)

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        host, port = conf.bindAddress.rsplit(":", 1)  # raftreg always sets bindAddress
        if host != "0.0.0.0":
            host = globalDnsResolver().resolve(host)  # TcpServer wants an IP literal
        self._server = PeerServer(
            self._syncObj._poller, host, port,
            onNewConnection=self._onNewIncomingConnection,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout,
        )

    def addNode(self, node: Any) -> None:
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conf = self._syncObj.conf
            conn = PeerConn(
                poller=self._syncObj._poller,
                timeout=conf.connectionTimeout,
                sendBufferSize=conf.sendBufferSize,
                recvBufferSize=conf.recvBufferSize,
                keepalive=conf.tcp_keepalive,
                remote=node.address,
                outgoing=True,
            )
            conn.on_refuse = self._log_refusal
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._initiator_frame, conn))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    # -------------------------------------------------------------- handshake, initiator side

    def _onOutgoingConnected(self, conn: PeerConn) -> None:
        node = self._connToNode(conn)
        if node is None:
            conn.disconnect()
            return
        conn.session, conn.refused = None, False
        conn.hs = _Handshake(True, time.monotonic() + HANDSHAKE_TIMEOUT_S, node=node)
        conn.hs.hello = hello(os.urandom(NONCE_BYTES), self._selfNode.address, node.address)
        conn.setOnMessageReceivedCallback(functools.partial(self._initiator_frame, conn))
        conn.write_handshake(conn.hs.hello)

    def _initiator_frame(self, conn: PeerConn, body: Any) -> None:
        hs = conn.hs
        try:
            if hs is None or not hs.initiator or type(body) is not bytes:
                raise ProtocolError("unexpected frame before the handshake")
            if not hs.proved:
                hs.transcript = hs.hello + MAGIC + CHALLENGE + _expect(
                    body, CHALLENGE, NONCE_BYTES, "challenge"
                )
                hs.proved = True
                conn.write_handshake(MAGIC + PROOF_I + self._keys.proof(LABEL_I, hs.transcript))
                return
            mac = _expect(body, PROOF_A, MAC_BYTES, "proof")
            if not hmac.compare_digest(mac, self._keys.proof(LABEL_A, hs.transcript)):
                raise ProtocolError("the peer failed to prove the cluster secret")
        except ProtocolError as e:
            conn.refuse(str(e))
            return
        self._open(conn, hs.node, self._keys.session(hs.transcript, initiator=True))

    # -------------------------------------------------------------- handshake, acceptor side

    def _onNewIncomingConnection(self, conn: PeerConn) -> None:
        conn.on_refuse = self._log_refusal
        if len(self._unknownConnections) >= MAX_PENDING:
            conn.refuse(f"{MAX_PENDING} connections are already in their handshake")
            return
        self._unknownConnections.add(conn)
        conn.hs = _Handshake(False, time.monotonic() + HANDSHAKE_TIMEOUT_S)
        conn.setOnMessageReceivedCallback(functools.partial(self._acceptor_frame, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))

    def _acceptor_frame(self, conn: PeerConn, body: Any) -> None:
        hs = conn.hs
        try:
            if hs is None or hs.initiator or type(body) is not bytes:
                raise ProtocolError("unexpected frame before the handshake")
            if not hs.transcript:
                _, addr_i, addr_a = parse_hello(body)
                if addr_a != self._selfNode.address:
                    raise ProtocolError(
                        f"addressed to {addr_a!r}, this node is {self._selfNode.address!r}"
                    )
                node = self._nodeAddrToNode.get(addr_i)
                if node is None or addr_i == self._selfNode.address:
                    raise ProtocolError(f"{addr_i!r} is not a member of this node's cluster")
                if self._shouldConnect(node):
                    # Between two members only the larger address connects; this node's own
                    # connection object for `node` must not be replaced by an incoming one.
                    raise ProtocolError(f"{addr_i!r} does not connect to this node (it is "
                                        "the other way round)")
                hs.node = node
                challenge = MAGIC + CHALLENGE + os.urandom(NONCE_BYTES)
                hs.transcript = body + challenge
                conn.write_handshake(challenge)
                return
            mac = _expect(body, PROOF_I, MAC_BYTES, "proof")
            if not hmac.compare_digest(mac, self._keys.proof(LABEL_I, hs.transcript)):
                raise ProtocolError(
                    f"failed to prove the cluster secret (claimed to be {hs.node.address})"
                )
        except ProtocolError as e:
            conn.refuse(str(e))
            return
        conn.write_handshake(MAGIC + PROOF_A + self._keys.proof(LABEL_A, hs.transcript))
        if conn.state == CONNECTION_STATE.DISCONNECTED:
            return  # the write found the peer gone (and logged it)
        self._unknownConnections.discard(conn)
        old = self._connections.get(hs.node)
        self._connections[hs.node] = conn
        if old is not None and old is not conn:
            # The peer reconnected (restarted, or its side saw the old connection die): the
            # old one is dead. What was in flight on it is lost, so SyncObj hears of a
            # disconnect before the new connect, as if PySyncObj had noticed first.
            was_open = old.session is not None and old.state != CONNECTION_STATE.DISCONNECTED
            old.disconnect()  # no longer mapped to the node: its callback does nothing
            if was_open:
                self._onNodeDisconnected(hs.node)
        self._open(conn, hs.node, self._keys.session(hs.transcript, initiator=False))

    def _open(self, conn: PeerConn, node: Any, session: Session) -> None:
        conn.session, conn.hs = session, None
        conn.setOnMessageReceivedCallback(functools.partial(self._deliver, conn, node))
        log.info("raft peer %s connected (secret proved both ways)", node.address)
        self._onNodeConnected(node)

    def _deliver(self, conn: PeerConn, node: Any, message: Any) -> None:
        # PeerConn yields checked dicts once the session is open; anything else is a bug.
        if conn.session is None or type(message) is not dict:
            conn.refuse("message outside an authenticated session")
            return
        self._onMessageReceived(node, message)

    # -------------------------------------------------------------- refusals and timeouts

    def _log_refusal(self, conn: PeerConn, reason: str) -> None:
        if conn.outgoing:
            self._refusals(f"to {conn.remote}", conn.remote, reason)
        else:
            self._refusals(f"from {conn.remote}", conn.remote.rpartition(":")[0], reason)

    def _onDisconnected(self, conn: PeerConn) -> None:
        if conn.hs is not None and not conn.refused and not self._destroying:
            hs = conn.hs
            reason = "closed before the handshake completed" + (
                " (does the peer hold this cluster's secret and list this node?)"
                if hs.initiator and hs.proved else ""
            )
            self._log_refusal(conn, reason)
        super()._onDisconnected(conn)

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        pending = [c for c in self._unknownConnections if c.hs is not None]
        pending += [c for c in self._connections.values() if c.hs is not None]
        for conn in pending:
            if conn.hs is not None and conn.hs.deadline < now:
                conn.refuse(f"handshake not completed within {HANDSHAKE_TIMEOUT_S:g} s")
                self._unknownConnections.discard(conn)

    # -------------------------------------------------------------- outbox

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        conn = self._connections.get(node)
        if conn is None or conn.session is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False
        if message.get("serialized", True) is False:
            # PySyncObj's "dump file read error" marker, which its own receiver cannot unpack:
            # send the "nothing to install" heartbeat instead (check_message refuses False).
            message = {**message, "serialized": None}
        self._outbox.append((node, message))
        return True

    def flush_outbox(self) -> None:
        """Release every queued message, in order, after one call of `before_send`. If that
        raises, nothing is ever released again (a failed fsync cannot be retried safely)."""
        if not self._outbox:
            return
        box, self._outbox = self._outbox, []
        if self._poisoned:
            return
        if self.before_send is not None:
            try:
                self.before_send()
            except BaseException:
                self._poisoned = True
                log.critical("the durable point failed: no raft message will leave this node")
                raise
        frames: dict[PeerConn, list[bytes]] = {}
        for node, message in box:
            conn = self._connections.get(node)
            if conn is None or conn.session is None or conn.state != CONNECTION_STATE.CONNECTED:
                continue  # the connection died since: lost, as on a dead socket
            try:
                frames.setdefault(conn, []).append(conn.session.seal(message))
            except (ProtocolError, TypeError, ValueError, OverflowError) as e:
                log.error("raft message %r to %s not sent: %s", message.get("type"), node, e)
        for conn, parts in frames.items():
            conn.write(b"".join(parts))

    def _onTick(self) -> None:
        super()._onTick()  # bind, (re)connect
        self._expire_handshakes()
        self.flush_outbox()

    def destroy(self) -> None:
        self._outbox = []
        self._destroying = True  # handshakes cut short by our own shutdown are not refusals
        super().destroy()
