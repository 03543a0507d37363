"""A live node's raft port under attack: random frames, oversized length prefixes, truncated
handshakes and malicious pickles — framed PySyncObj's old way, sealed with the cluster secret
the old way (PySyncObj's Fernet key derivation), and even sealed in a session opened with the
secret. Nothing executes (the pickle would create a marker file), the node keeps serving puts,
and each refused connection is logged exactly once."""

from __future__ import annotations

import os
import pickle
import re
import socket
import struct
import time
import tomllib
import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from pysyncobj.encryptor import getEncryptor

from raftreg.consensus import peer as P
from raftreg.pb import raftreg_pb2 as pb
from raftreg.testing import ProcessCluster
from tests.integration.wire import wire

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class _Evil:
    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))  # unpickling it creates the marker file


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _recv_frame(s: socket.socket) -> bytes:
    head = _recv_exactly(s, 4)
    return _recv_exactly(s, int.from_bytes(head, "big"))


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _handshake(s: socket.socket, keys: P.PeerKeys, me: str, target: str) -> P.Session:
    """Open a session as member `me` (needs the secret), the way PeerTransport does."""
    h = P.hello(os.urandom(P.NONCE_BYTES), me, target)
    s.sendall(_frame(h))
    challenge = _recv_frame(s)
    transcript = h + challenge
    s.sendall(_frame(P.MAGIC + P.PROOF_I + keys.proof(P.LABEL_I, transcript)))
    proof = _recv_frame(s)
    assert proof == P.MAGIC + P.PROOF_A + keys.proof(P.LABEL_A, transcript)
    return keys.session(transcript, initiator=True)


def test_raft_port_refuses_everything_but_members_proving_the_secret(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    c = cluster
    secret = tomllib.loads(c.config_path.read_text())["cluster"]["secret"]
    # Between two members only the larger address connects: attack the node with the smallest
    # raft address and claim to be the one with the largest (whose connections it accepts).
    by_addr = sorted(c.names, key=lambda n: c.raft[n])
    target, member = by_addr[0], by_addr[-1]
    host, port = c.raft[target].rsplit(":", 1)
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    evil = pickle.dumps(_Evil())
    old_plain = zlib.compress(evil, 3)
    old_sealed = getEncryptor(secret).encrypt(old_plain)  # the old seal, with the right secret
    keys = P.PeerKeys(secret)

    def put(i: int) -> None:
        """A put through the attacked node, retried as a client does: a secret holder that
        claims a member's address replaces that member's link for a moment (as a restarted
        member does), and PySyncObj drops a proposal forwarded while the link is down."""
        w = wire(c.client[target])
        try:
            for attempt in range(5):
                try:
                    w.kv.Put(pb.PutRequest(key=b"peer-port/%d" % i, value=b"ok"), timeout=15)
                    return
                except grpc.RpcError as e:
                    time.sleep(0.5)
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                        raise
        finally:
            w.close()

    # A connection that hangs up right after its bytes may have them dropped unread with the
    # end of stream (PySyncObj's read loop): only truncated handshakes hang up.
    def raw(payload: bytes, hang_up: bool = False) -> Callable[[socket.socket], None]:
        def send(s: socket.socket) -> None:
            s.sendall(payload)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
        return send

    def hello_then(payload: bytes | None) -> Callable[[socket.socket], None]:
        """A valid HELLO from a member's address, then `payload` (None: silence)."""
        def send(s: socket.socket) -> None:
            s.sendall(_frame(P.hello(os.urandom(P.NONCE_BYTES), c.raft[member], c.raft[target])))
            _recv_frame(s)  # the challenge
            if payload == b"":
                s.shutdown(socket.SHUT_WR)
            elif payload is not None:
                s.sendall(payload)
        return send

    def in_session(payload: Callable[[P.Session], bytes]) -> Callable[[socket.socket], None]:
        def send(s: socket.socket) -> None:
            s.sendall(payload(_handshake(s, keys, c.raft[member], c.raft[target])))
        return send

    attacks: dict[str, Callable[[socket.socket], None]] = {
        "random frame": raw(os.urandom(300)),
        "random small frame": raw(_frame(os.urandom(200))),
        "oversized length": raw(b"\xff\xff\xff\xff" + b"x" * 100),
        "just over the pre-auth limit": raw((P.PRE_AUTH_MAX + 1).to_bytes(4, "big") + b"x" * 10),
        "truncated length": raw(b"\x00\x00", hang_up=True),
        "truncated hello": raw((120).to_bytes(4, "big") + P.MAGIC + P.HELLO + b"\x00" * 10,
                               hang_up=True),
        "hello, then gone": hello_then(b""),
        "hello, then silence": hello_then(None),  # refused at the handshake timeout
        "hello, then a wrong proof": hello_then(_frame(P.MAGIC + P.PROOF_I + b"\x00" * 32)),
        "pickle, PySyncObj framing": raw(struct.pack("i", len(old_plain)) + old_plain),
        "pickle, our framing": raw(_frame(old_plain)),
        "pickle sealed the old way with the secret": raw(
            struct.pack("i", len(old_sealed)) + old_sealed),
        "old seal, our framing": raw(_frame(old_sealed[: P.PRE_AUTH_MAX])),
        "pickle as the proof": hello_then(_frame(evil[: P.PRE_AUTH_MAX])),
        "pickle sealed in a session (secret holder)": in_session(lambda s: s.seal_bytes(evil)),
        "oversized frame in a session (secret holder)": in_session(
            lambda _: (P.FRAME_MAX + 1).to_bytes(4, "big") + b"x" * 100),
    }
    assert len(attacks) <= 20  # the node logs up to 20 refusals a minute per source host
    put(0)
    sources: dict[str, str] = {}
    for i, (name, attack) in enumerate(attacks.items()):
        # An attack inside a session takes over the claimed member's link; the real member,
        # reconnecting, would take it back and could close the attacker's connection before
        # its frame was read (then nothing is refused, or logged). Paused, it cannot.
        in_a_session = "(secret holder)" in name
        if in_a_session:
            c.pause(member)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            ip, sport = s.getsockname()
            sources[name] = f"{ip}:{sport}"
            attack(s)
            s.settimeout(10)
            try:
                while s.recv(4096):  # the node closes it (at once, or at the handshake timeout)
                    pass
            except ConnectionResetError:
                pass
        if in_a_session:
            c.resume(member)
        put(i + 1)  # the node keeps serving clients
    assert not marker.exists()

    def refusals(src: str) -> list[str]:
        pat = re.compile(rf"raft peer connection from {re.escape(src)} refused: (.*)")
        return [m.group(1) for m in pat.finditer(c.log_text(target))]

    deadline = time.monotonic() + 10
    while any(not refusals(src) for src in sources.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, src in sources.items():
        assert len(refusals(src)) == 1, (name, refusals(src))
    # The reasons say what went wrong.
    assert "failed to prove the cluster secret" in refusals(sources["hello, then a wrong proof"])[0]
    assert "limit" in refusals(sources["oversized length"])[0]
    assert "undecodable" in refusals(sources["pickle sealed in a session (secret holder)"])[0]
    assert "within" in refusals(sources["hello, then silence"])[0]
    assert "after authentication" in refusals(
        sources["oversized frame in a session (secret holder)"])[0]
    assert not marker.exists()
    assert c.alive(target)
    put(len(attacks) + 1)
    assert c.wait_converged().header.revision >= len(attacks) + 2
