"""What raftreg puts into PySyncObj's log entries and how it reads them back: msgpack, no pickle.

PySyncObj 0.3.17 stores a log entry's command as one type byte followed by a body, and its own
bodies are pickles: a `@replicated` call is `pickle.dumps((funcID, args))`, a membership change
`pickle.dumps(['add', id, TCPNode])`, a code version `pickle.dumps(int)`, and applying an entry
(on every replica, from the network, the journal or the dump) unpickles it. `CommandsMixin`
replaces every one of those paths (overriding SyncObj's name-mangled private methods), so no
byte of a log entry ever reaches an unpickler:

    REGULAR    b"\\x00" + msgpack([item: bytes, ...])  a group of raftreg commands; b"" = read
                                                       barrier of older versions (a no-op)
    NO_OP      b"\\x01"                                 PySyncObj's leader no-op
    MEMBERSHIP b"\\x02" + msgpack([op, "host:port"])   op "add" or "rem"
    VERSION    b"\\x03" ...                             refused everywhere (one code version)

Applying is deterministic: an entry that does not decode is skipped with one error line on
every replica alike (the same bytes fail the same way everywhere), never half-applied.

Size contract (keeps PySyncObj's chunked append_entries — which pickles the entry — unreachable):
every entry is smaller than `APPEND_BATCH_BYTES`, PySyncObj's `appendEntriesBatchSizeBytes`,
because PySyncObj chunks exactly the single entries that are at least that large. Proposals are
cut at `BATCH_MAX_BYTES` of items (raft.py `RaftNode._flush`), one item is at most
`MAX_ITEM_BYTES`, and the peer wire refuses any entry or forwarded command over
`MAX_ENTRY_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
from pysyncobj import SyncObj

log = logging.getLogger("raftreg.consensus")

# PySyncObj's _COMMAND_TYPE values (the first byte of every log entry).
REGULAR = 0
NO_OP = 1
MEMBERSHIP = 2
VERSION = 3

APPEND_BATCH_BYTES = 16 << 20  # SyncObjConf.appendEntriesBatchSizeBytes
MAX_ENTRY_BYTES = APPEND_BATCH_BYTES - 1  # a log entry's command, type byte included
BATCH_MAX_BYTES = 8 << 20  # item bytes per proposed group (at least one item per group)
MAX_ITEM_BYTES = BATCH_MAX_BYTES  # one command; a group of one such item still fits an entry
_MAX_ADDR = 261  # "host:port" with a 255-byte host name

NO_OP_COMMAND = bytes([NO_OP])


class CommandError(ValueError):
    """A log-entry command that raftreg does not accept."""


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=_no_ext
        )
    except Exception as e:  # msgpack raises several ValueError/TypeError subclasses
        raise CommandError(f"not msgpack: {e}") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise CommandError(f"msgpack extension type {code} is not allowed")


def encode_group(items: Sequence[bytes]) -> bytes:
    """The body of a REGULAR command (without its type byte)."""
    return msgpack.packb(list(items), use_bin_type=True)  # type: ignore[no-any-return]


def decode_group(command: bytes) -> list[bytes]:
    """The items of a REGULAR command (type byte included)."""
    if command[:1] != bytes([REGULAR]):
        raise CommandError("not a regular command")
    items = _unpack(command[1:])
    if not isinstance(items, list) or not all(type(i) is bytes for i in items):
        raise CommandError("a regular command is a list of byte strings")
    return items


def encode_membership(op: str, addr: str) -> bytes:
    """The body of a MEMBERSHIP command (without its type byte)."""
    _check_membership(op, addr)
    return msgpack.packb([op, addr], use_bin_type=True)  # type: ignore[no-any-return]


def decode_membership(command: bytes) -> tuple[str, str]:
    """`(op, "host:port")` of a MEMBERSHIP command (type byte included); PySyncObj's
    `__doChangeCluster` accepts this 2-tuple and builds the node from its address."""
    if command[:1] != bytes([MEMBERSHIP]):
        raise CommandError("not a membership command")
    req = _unpack(command[1:])
    if not (isinstance(req, list) and len(req) == 2):
        raise CommandError("a membership command is [op, address]")
    op, addr = req
    _check_membership(op, addr)
    return op, addr


def _check_membership(op: object, addr: object) -> None:
    if op not in ("add", "rem"):
        raise CommandError(f"unknown membership operation {op!r}")
    if not isinstance(addr, str) or not 3 <= len(addr) <= _MAX_ADDR:
        raise CommandError("a member address is a 'host:port' string")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"bad member address {addr!r}")


def check_entry_command(command: object) -> None:
    """Wire check of one log entry's command (append_entries) or forwarded proposal
    (apply_command): bytes below the size limit, of a type raftreg writes; membership changes
    must decode (a leader parses forwarded ones before appending them). REGULAR bodies are
    decoded when applied."""
    if type(command) is not bytes or not command:
        raise CommandError("a command is a non-empty byte string")
    if len(command) > MAX_ENTRY_BYTES:
        raise CommandError(f"command of {len(command)} bytes (limit {MAX_ENTRY_BYTES})")
    kind = command[0]
    if kind == MEMBERSHIP:
        decode_membership(command)
    elif kind == NO_OP:
        if command != NO_OP_COMMAND:
            raise CommandError("a no-op has no body")
    elif kind != REGULAR:
        raise CommandError(f"command type {kind} is not accepted")


if TYPE_CHECKING:
    _SyncObjBase = SyncObj  # untyped (Any) for mypy: the mixin reaches SyncObj's internals
else:
    _SyncObjBase = object


class CommandsMixin(_SyncObjBase):  # type: ignore[misc,valid-type]
    """Put before `SyncObj` in the bases: `class _Fsm(CommandsMixin, SyncObj)`.

    Overrides every SyncObj method that encodes or decodes a log entry's command (the
    `_SyncObj__*` names are SyncObj's private methods, which it calls through their mangled
    names, so these definitions take their place). The subclass implements `_apply_items`.
    Proposals go in with `propose_group`; `@replicated` methods must not be used (they pickle).
    """

    def _apply_items(self, items: list[bytes]) -> list[Any]:  # tick thread
        """Apply one group in order; returns one result per item (None for b"")."""
        raise NotImplementedError

    # ------------------------------------------------------------------ proposing

    def propose_group(self, items: Sequence[bytes], callback: Callable[[Any, int], None]) -> None:
        """Queue one REGULAR entry holding `items`; `callback(results, FAIL_REASON)` runs on the
        tick thread once this node applied it (results: `_apply_items`' list) or failed."""
        body = encode_group(items)
        if 1 + len(body) > MAX_ENTRY_BYTES:
            raise CommandError(f"a group of {1 + len(body)} bytes exceeds {MAX_ENTRY_BYTES}")
        self._applyCommand(body, callback, REGULAR)

    def addNodeToCluster(self, node: Any, callback: Any = None) -> None:
        self._propose_membership("add", node, callback)

    def removeNodeFromCluster(self, node: Any, callback: Any = None) -> None:
        self._propose_membership("rem", node, callback)

    def _propose_membership(self, op: str, node: Any, callback: Any) -> None:
        if not self.conf.dynamicMembershipChange:
            raise CommandError("dynamicMembershipChange is disabled")
        addr = node if isinstance(node, str) else str(node.id)
        self._applyCommand(encode_membership(op, addr), callback, MEMBERSHIP)

    def setCodeVersion(self, newVersion: int, callback: Any = None) -> None:
        raise CommandError("raftreg does not use PySyncObj code versions")

    # ------------------------------------------------------------------ SyncObj's private hooks

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> tuple[str, str] | None:
        """Called by SyncObj for queued proposals (leader), appended entries (follower), rolled
        back entries and applied entries: the membership change an entry carries, or None."""
        if command[:1] != bytes([MEMBERSHIP]):
            return None
        try:
            return decode_membership(command)
        except CommandError:
            return None  # applying it logs why; nothing changes anywhere

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # tick thread, in log order
        kind = command[0] if command else -1
        try:
            if kind == REGULAR:
                items = decode_group(command)
            elif kind == NO_OP:
                return None
            elif kind == MEMBERSHIP:
                change = decode_membership(command)
            else:
                raise CommandError(f"command type {kind} is not accepted")
        except CommandError as e:
            log.error("log entry not applied (skipped on every replica): %s", e)
            return None
        if kind == MEMBERSHIP:
            # Usually already done when the entry was appended; PySyncObj ignores repeats.
            self._SyncObj__doChangeCluster(change)
            return None
        return self._apply_items(items)
