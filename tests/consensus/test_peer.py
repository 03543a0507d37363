"""The peer protocol (raftreg/consensus/peer.py) and the log-entry codec (commands.py), in
process: sessions, message shapes, the handshake between real PySyncObj nodes, and refusals —
with PySyncObj's pickle module replaced by one that fails the test if anything touches it."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pysyncobj.journal
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.encryptor import getEncryptor

from raftreg.consensus import peer as P
from raftreg.consensus import peer_wire as W
from raftreg.consensus.commands import (
    APPEND_BATCH_BYTES,
    MAX_ENTRY_BYTES,
    CommandError,
    CommandsMixin,
    check_entry_command,
    decode_group,
    decode_membership,
    encode_group,
    encode_membership,
)
from raftreg.testing.ports import free_ports

SECRET = "peer-test-secret-0123456789abcdef"


class _Evil:
    """Unpickling it creates the file named by MARKER (a stand-in for running code)."""

    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path) -> bytes:
    _Evil.marker = str(marker)
    return pickle.dumps(_Evil())


class _NoPickle:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"pickle.{name} used")


def _no_pickle_call(*args: Any) -> Any:
    raise AssertionError("pickle used")


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (pysyncobj.tcp_connection, pysyncobj.syncobj, pysyncobj.serializer):
        monkeypatch.setattr(module, "pickle", _NoPickle())
    for name in ("loads", "dumps"):  # pysyncobj.journal imports these two by name
        monkeypatch.setattr(pysyncobj.journal, name, _no_pickle_call)


# ---------------------------------------------------------------------------------- sessions


def _pair() -> tuple[P.Session, P.Session]:
    keys = P.PeerKeys(SECRET)
    t = os.urandom(64)
    return keys.session(t, initiator=True), keys.session(t, initiator=False)


def _split(frame: bytes) -> tuple[bytes, bytes]:
    return frame[:4], frame[4:]


def test_session_round_trip_both_ways() -> None:
    i, a = _pair()
    m = {"type": "append_entries", "term": 3, "commit_index": 7, "prevLogIdx": 7,
         "prevLogTerm": 3, "entries": [(encode_membership_cmd(), 8, 3), (b"\x01", 9, 3)]}
    got = a.open(*_split(i.seal(m)))
    assert got["entries"] == ((encode_membership_cmd(), 8, 3), (b"\x01", 9, 3))
    assert i.open(*_split(a.seal({"type": "response_vote", "term": 3}))) == {
        "type": "response_vote", "term": 3}


def encode_membership_cmd() -> bytes:
    return b"\x02" + encode_membership("add", "127.0.0.1:7004")


def test_session_refuses_tampering_replay_reorder_reflection_and_other_secrets() -> None:
    i, a = _pair()
    f1 = i.seal({"type": "timeout_now", "term": 1})
    f2 = i.seal({"type": "timeout_now", "term": 2})
    tampered = bytearray(f1)
    tampered[-1] ^= 1
    with pytest.raises(P.ProtocolError):
        a.open(*_split(bytes(tampered)))
    i, a = _pair()
    f1 = i.seal({"type": "timeout_now", "term": 1})
    f2 = i.seal({"type": "timeout_now", "term": 2})
    with pytest.raises(P.ProtocolError):
        a.open(*_split(f2))  # reordered (counter nonce)
    i, a = _pair()
    f1 = i.seal({"type": "timeout_now", "term": 1})
    assert a.open(*_split(f1))["term"] == 1
    with pytest.raises(P.ProtocolError):
        a.open(*_split(f1))  # replayed
    with pytest.raises(P.ProtocolError):
        i.open(*_split(f1))  # reflected back to its sender (per-direction keys)
    other = P.PeerKeys("another-secret-0123456789abcdef").session(b"t", initiator=False)
    with pytest.raises(P.ProtocolError):
        other.open(*_split(P.PeerKeys(SECRET).session(b"t", initiator=True).seal(
            {"type": "timeout_now", "term": 1})))


def test_authenticated_garbage_is_still_refused_before_syncobj_sees_it() -> None:
    """Even a secret holder cannot hand SyncObj anything but a raft message of the right shape."""
    for body in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"type": "status"}),
                 msgpack.packb({1: 2}), msgpack.packb(msgpack.ExtType(5, b"x")),
                 msgpack.packb({"type": "timeout_now", "term": msgpack.ExtType(1, b"x")})):
        keys = P.PeerKeys(SECRET)
        tx, rx = keys.session(b"t", initiator=True), keys.session(b"t", initiator=False)
        header = (len(body) + P.TAG_BYTES).to_bytes(4, "big")
        frame = header + tx._tx.encrypt(W._nonce(0), body, header)
        with pytest.raises(P.ProtocolError):
            rx.open(*_split(frame))


# ---------------------------------------------------------------------------------- shapes


GOOD: list[dict[str, Any]] = [
    {"type": "request_vote", "term": 2, "last_log_index": 5, "last_log_term": 1},
    {"type": "response_vote", "term": 2},
    {"type": "append_entries", "term": 2, "commit_index": 5},
    {"type": "append_entries", "term": 2, "commit_index": 5, "serialized": None},
    {"type": "append_entries", "term": 2, "commit_index": 5, "serialized": (b"dump", True, False)},
    {"type": "append_entries", "term": 2, "commit_index": 5, "entries": (), "prevLogIdx": 5,
     "prevLogTerm": 2},
    {"type": "append_entries", "term": 2, "commit_index": 5, "entries": (), "prevLogIdx": None,
     "prevLogTerm": None},
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5, "prevLogTerm": 2,
     "entries": ((b"\x00" + encode_group([b"a", b""]), 6, 2), (b"\x01", 7, 2))},
    {"type": "next_node_idx", "next_node_idx": 6, "reset": False, "success": True},
    {"type": "apply_command", "command": b"\x00" + encode_group([b"x"]), "request_id": 4},
    {"type": "apply_command", "command": b"\x02" + encode_membership("rem", "h:1")},
    {"type": "apply_command_response", "request_id": 4, "log_idx": 9, "log_term": 2},
    {"type": "apply_command_response", "request_id": 4, "error": 4},
    {"type": "timeout_now", "term": 3},
    # raftreg's ReadIndex rounds (read_index.py)
    {"type": "append_entries", "term": 2, "commit_index": 5, "entries": (), "prevLogIdx": 5,
     "prevLogTerm": 2, "read_seq": 7},
    {"type": "next_node_idx", "next_node_idx": 6, "reset": False, "success": True,
     "read_seq": 7},
    {"type": "read_index", "id": 3},
    {"type": "read_index_resp", "id": 3, "index": 41},
    {"type": "read_index_resp", "id": 3, "error": "not the leader"},
]


@pytest.mark.parametrize("m", GOOD, ids=lambda m: str(m["type"]))
def test_every_message_pysyncobj_sends_passes(m: dict[str, Any]) -> None:
    assert P.check_message(m) is m


BAD: list[object] = [
    [], "status", {"type": "utility"}, {"type": None}, {"term": 1},
    {"type": "response_vote"},  # missing term
    {"type": "response_vote", "term": True},  # bool is not a term
    {"type": "response_vote", "term": -1},
    {"type": "response_vote", "term": 1, "extra": 1},
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5, "prevLogTerm": 2,
     "transmission": "finish", "data": b"pickle"},  # PySyncObj's chunked entries
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5},
    {"type": "append_entries", "term": 2, "commit_index": 5, "entries": ()},
    {"type": "append_entries", "term": 2, "commit_index": 5, "serialized": False},
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5, "prevLogTerm": 2,
     "entries": ((b"\x03" + pickle.dumps(2), 6, 2),)},  # a VERSION command
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5, "prevLogTerm": 2,
     "entries": ((pickle.dumps(("x",)), 6, 2),)},
    {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 5, "prevLogTerm": 2,
     "entries": ([b"\x01", 6, 2],)},
    {"type": "apply_command", "command": b"\x02" + pickle.dumps(["add", "h:1", None])},
    {"type": "apply_command", "command": b"\x00" * (MAX_ENTRY_BYTES + 1)},
    {"type": "apply_command", "command": b""},
    {"type": "apply_command_response", "request_id": 4},
    {"type": "apply_command_response", "request_id": 4, "error": 1, "log_idx": 9, "log_term": 2},
    {"type": "apply_command_response", "request_id": 4, "log_idx": 9},
    {"type": "read_index"},
    {"type": "read_index", "id": 3, "index": 4},
    {"type": "read_index_resp", "id": 3},  # neither an index nor an error
    {"type": "read_index_resp", "id": 3, "index": 4, "error": "x"},  # both
    {"type": "read_index_resp", "id": 3, "error": "x" * 201},
    {"type": "read_index_resp", "id": 3, "index": -1},
    {"type": "next_node_idx", "next_node_idx": 6, "reset": False, "success": True,
     "read_seq": "7"},
]


@pytest.mark.parametrize("m", BAD, ids=range(len(BAD)))
def test_malformed_messages_are_refused(m: object) -> None:
    with pytest.raises(P.ProtocolError):
        P.check_message(m)


def test_hello_round_trip_and_refusals() -> None:
    n = os.urandom(P.NONCE_BYTES)
    assert P.parse_hello(P.hello(n, "10.0.0.1:7001", "10.0.0.2:7002")) == (
        n, "10.0.0.1:7001", "10.0.0.2:7002")
    for bad in (b"", P.MAGIC, b"\x80\x04\x95" + b"x" * 60, P.hello(n, "a:1", "b:2")[:-1],
                P.hello(n, "a:1", "b:2") + b"x", P.MAGIC + b"H" + n + b"\x02\xff\xfe\x00"):
        with pytest.raises(P.ProtocolError):
            P.parse_hello(bad)


# ---------------------------------------------------------------------------------- commands


def test_commands_round_trip_and_refuse_pickles(tmp_path: Path) -> None:
    assert decode_group(b"\x00" + encode_group([b"a", b""])) == [b"a", b""]
    assert decode_membership(b"\x02" + encode_membership("add", "h:7")) == ("add", "h:7")
    marker = tmp_path / "pwned"
    for cmd in (b"\x00" + evil_pickle(marker), b"\x00" + msgpack.packb([1]),
                b"\x00" + msgpack.packb([b"a"]) + b"extra"):
        with pytest.raises(CommandError):
            decode_group(cmd)
    for cmd in (b"\x02" + evil_pickle(marker), b"\x02" + msgpack.packb(["add", "nohost"]),
                b"\x02" + msgpack.packb(["set_version", "h:1"])):
        with pytest.raises(CommandError):
            decode_membership(cmd)
    with pytest.raises(CommandError):
        check_entry_command(b"\x03" + evil_pickle(marker))
    with pytest.raises(CommandError):
        encode_membership("add", "h:99999")
    assert not marker.exists()
    assert MAX_ENTRY_BYTES < APPEND_BATCH_BYTES


class _Node(CommandsMixin, SyncObj):  # type: ignore[misc]
    """A bare PySyncObj node with raftreg's commands and wire (journal in memory)."""

    def __init__(self, me: str, peers: list[str], secret: str, **conf: Any) -> None:
        self._peer_secret = secret
        self.applied: list[bytes] = []
        super().__init__(me, peers, SyncObjConf(
            password=None, bindAddress=me, appendEntriesUseBatch=False, autoTickPeriod=0.01,
            appendEntriesPeriod=0.05,
            raftMinTimeout=0.2, raftMaxTimeout=0.4, connectionRetryTime=0.1,
            commandsWaitLeader=False, dynamicMembershipChange=True,
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES, **conf,
        ), transportClass=P.PeerTransport)

    def _apply_items(self, items: list[bytes]) -> list[Any]:
        self.applied.extend(items)
        return [len(i) if i else None for i in items]


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _cluster(impostor: bool) -> Iterator[list[_Node]]:
    """Two members holding SECRET; the third member of their configuration runs with another
    secret (an impostor) or not at all."""
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    made: list[_Node] = []
    try:
        made += [_Node(a, [b for b in addrs if b != a], SECRET) for a in addrs[:2]]
        if impostor:
            made.append(_Node(addrs[2], addrs[:2], "a-different-secret-0123456789abc"))
        yield made
    finally:
        for n in made:
            n.destroy()
        deadline = time.monotonic() + 5
        while any(n.tick_thread_alive() for n in made) and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def nodes(no_pickle: None) -> Iterator[list[_Node]]:
    yield from _cluster(impostor=True)


@pytest.fixture
def pair(no_pickle: None) -> Iterator[list[_Node]]:
    yield from _cluster(impostor=False)


def _propose(n: _Node, items: list[bytes]) -> tuple[Any, int]:
    done = threading.Event()
    out: list[tuple[Any, int]] = []

    def cb(res: Any, err: int) -> None:
        out.append((res, err))
        done.set()

    n.propose_group(items, cb)
    assert done.wait(10)
    return out[0]


def test_nodes_commit_over_the_new_wire_and_an_impostor_never_connects(
    nodes: list[_Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftreg.consensus.peer")
    a, b, impostor = nodes
    _wait(lambda: a._isLeader() or b._isLeader())
    leader, follower = (a, b) if a._isLeader() else (b, a)
    assert _propose(leader, [b"one", b""]) == ([3, None], 0)
    assert _propose(follower, [b"two"]) == ([3], 0)  # forwarded as apply_command
    _wait(lambda: leader.applied == follower.applied == [b"one", b"", b"two"])
    # The impostor (other secret) never got a message through, either way round.
    assert not impostor.isNodeConnected(a.selfNode) and not impostor.isNodeConnected(b.selfNode)
    assert not a.isNodeConnected(impostor.selfNode) and not b.isNodeConnected(impostor.selfNode)
    assert impostor.applied == [] and impostor._getLeader() is None
    _wait(lambda: any("failed to prove the cluster secret" in r.getMessage()
                      for r in caplog.records))

    # A membership change travels as msgpack, through the log, to both members.
    out: list[int] = []
    done = threading.Event()

    def removed(result: Any, err: int) -> None:
        out.append(err)
        done.set()

    leader.removeNodeFromCluster(impostor.selfNode.address, callback=removed)
    assert done.wait(10) and out == [0]
    _wait(lambda: impostor.selfNode not in follower.otherNodes)
    assert _propose(follower, [b"three"]) == ([5], 0)


def test_outsiders_never_get_past_the_handshake_and_each_is_logged_once(
    pair: list[_Node], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="raftreg.consensus.peer")
    a, b = pair
    _wait(lambda: a._isLeader() or b._isLeader())
    leader = a if a._isLeader() else b
    # A pickle sealed the old way (PySyncObj's Fernet with the RIGHT secret), an oversized
    # length, random bytes, a truncated hello, a hello from a non-member.
    marker = tmp_path / "pwned"
    token = getEncryptor(SECRET).encrypt(evil_pickle(marker))
    host, port = str(leader.selfNode.address).rsplit(":", 1)
    hello = P.hello(os.urandom(32), "127.0.0.1:1", str(leader.selfNode.address))
    attacks = [len(token).to_bytes(4, "little") + token, b"\xff\xff\xff\xff" + b"x" * 64,
               os.urandom(200), (200).to_bytes(4, "big") + P.MAGIC + b"H",
               len(hello).to_bytes(4, "big") + hello]
    sources = []
    for payload in attacks:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            ip, sport = s.getsockname()
            sources.append(f"from {ip}:{sport} refused")
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            assert s.recv(100) == b""  # closed without a word
    _wait(lambda: all(any(src in r.getMessage() for r in caplog.records) for src in sources))
    time.sleep(0.2)
    for src in sources:
        assert sum(src in r.getMessage() for r in caplog.records) == 1, src
    assert not marker.exists()
    assert _propose(leader, [b"after"]) == ([5], 0)
