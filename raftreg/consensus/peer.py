"""raftreg's raft peer protocol under PySyncObj: mutual proof of the cluster secret, then
authenticated, encrypted msgpack frames. Nothing a peer sends is ever unpickled.

PySyncObj 0.3.17's own protocol pickles every message (and, with a password, seals it with
Fernet), accepts read-only nodes and admin ("utility") commands on the same port, and lets any
sender announce a frame of up to 2 GiB. `PeerTransport` replaces its wire, not its logic: it
subclasses PySyncObj's TCPTransport, TcpConnection and TcpServer (overriding their name-mangled
private methods, no fork) and hands SyncObj the same message dicts it always got.

The wire itself (framing, handshake, key schedule, AEAD sessions, the message checks) is
peer_wire.py's, as pure functions; this module owns the connections: the subclasses of
PySyncObj's TCPTransport, TcpConnection and TcpServer that run it on the tick thread, the
handshake state machine and its deadlines, the pending-connection limit, and the outbox.
Any failure closes the connection and is logged once for that connection (at most
`_RefusalLog.BURST` lines a minute per remote host; the rest are counted).

Outbox (the durable point's half in the transport): `send()` never writes to a socket, it
queues. `flush_outbox()` first calls the `before_send` hook once (`_Fsm.durable_point`, fsm.py:
it syncs the journal, so term, vote and entries are on disk before any message that reflects
them leaves), then seals and writes every queued message in order. PySyncObj's tick calls
`flush_outbox()` at the end of this transport's tick callback; the raft layer calls it again
after the poll. Handshake frames carry no raft state and are written at once.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from raftreg.consensus.peer_wire import (
    CHALLENGE,
    FRAME_MAX,
    HANDSHAKE_TIMEOUT_S,
    HELLO,
    KDF_ROUNDS,
    LABEL_A,
    LABEL_I,
    MAC_BYTES,
    MAGIC,
    MAX_PENDING,
    NONCE_BYTES,
    PRE_AUTH_MAX,
    PROOF_A,
    PROOF_I,
    TAG_BYTES,
    PeerKeys,
    ProtocolError,
    Session,
    _expect,
    check_message,
    hello,
    parse_hello,
)

# The wire's public names: re-exported, `raftreg.consensus.peer` names them too.
__all__ = [
    "CHALLENGE", "FRAME_MAX", "HANDSHAKE_TIMEOUT_S", "HELLO", "KDF_ROUNDS", "LABEL_A",
    "LABEL_I", "MAC_BYTES", "MAGIC", "MAX_PENDING", "NONCE_BYTES", "PRE_AUTH_MAX", "PROOF_A",
    "PROOF_I", "TAG_BYTES", "PeerConn", "PeerKeys", "PeerServer", "PeerTransport",
    "ProtocolError", "Session", "check_message", "hello", "parse_hello",
]

log = logging.getLogger("raftreg.consensus.peer")


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
    """PySyncObj's TCP transport speaking raftreg's peer protocol (peer_wire.py).

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
        # The durable point (see the module docstring): the SyncObj's `durable_point`.
        self.before_send: Callable[[], None] | None = getattr(syncObj, "durable_point", None)
        # Adds the SyncObj's fields to an outgoing message (`_Fsm.stamp_outgoing`: read rounds).
        self.stamp: Callable[[dict[str, Any]], None] | None = getattr(
            syncObj, "stamp_outgoing", None)
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
        if self.stamp is not None:
            self.stamp(message)
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
