"""The MVCC key space: per-key revision history, the change log, range reads, compaction.

Invariants:
- `revision` starts at 1 and grows by exactly one per write (`begin` ... `end`) that changed at
  least one key; every change of one write carries revision `revision + 1` while it runs.
- Each key's history is a list of records with strictly increasing `mod_revision`; a record is
  either a live KeyValue (version >= 1) or a tombstone KeyValue(key, 0, rev, 0, b"", 0), the
  same object a DELETE event carries. Hence at most one change per key per revision (the txn
  validation rules guarantee that for txns).
- The change log lists, per changed revision >= `compact_revision`, the changed keys in the
  order they changed. Every history record with mod_revision >= compact_revision appears in it
  exactly once; events are rebuilt from the log and the histories.
- Copy on write for views: a history list that a live `KeySpaceView` may share is replaced by a
  copy before its first change (`_writable`), never changed in place. So a view, taken in
  O(keys) pointer copies, stays exactly the state at its revision while writes go on.
- After `compact(c)`, a key's history holds every record with mod_revision >= c plus the newest
  older record if that one is live. So reads at any revision >= c are exact, and every record
  that can be an event (mod >= c) still has its predecessor — prev_kv is exact too.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import Any

from sortedcontainers import SortedList

from raftreg.common.types import Event, EventType, KeyValue
from raftreg.errors import Compacted, FutureRevision, InvalidArgument
from raftreg.store.codec import ArrayHeader, read_bytes, read_int, read_list

__all__ = ["KeySpace", "KeySpaceView", "in_range"]

ALL_KEYS = b"\0"
_mod = attrgetter("mod_revision")

COMPACTED_MESSAGE = "mvcc: required revision has been compacted"
FUTURE_MESSAGE = "mvcc: required revision is a future revision"


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """etcd's key selection: single key, [key, range_end), or every key >= key for b"\\0"."""
    if not range_end:
        return k == key
    if range_end == ALL_KEYS:
        return k >= key
    return key <= k < range_end


def tombstone(key: bytes, revision: int) -> KeyValue:
    return KeyValue(key, 0, revision, 0, b"", 0)


class KeySpace:
    """Ordered MVCC key space. Writes must be bracketed by `begin()` / `end()`; reads may run
    inside a write and then see its changes (as etcd's write txn does)."""

    __slots__ = (
        "_compact_revision",
        "_dirty",
        "_hist",
        "_keys",
        "_live",
        "_log_keys",
        "_log_revs",
        "_pending",
        "_private",
        "_revision",
        "_views",
    )

    def __init__(self) -> None:
        self._hist: dict[bytes, list[KeyValue]] = {}
        self._keys: Any = SortedList()  # every key that has a history, ascending
        self._log_revs: list[int] = []  # ascending
        self._log_keys: list[tuple[bytes, ...]] = []  # parallel to _log_revs
        # Keys whose history compaction could shorten: more than one record or a tombstone
        # last. Other keys hold one live record that no compaction drops. Order-irrelevant.
        self._dirty: set[bytes] = set()
        self._live = 0  # keys whose newest record is live
        self._revision = 1
        self._compact_revision = 0
        self._pending: list[bytes] | None = None  # keys changed by the running write
        # Views that may still share history lists, and the keys whose list was copied (is
        # no longer shared) since the newest view; None when no view is alive.
        self._views: weakref.WeakSet[KeySpaceView] = weakref.WeakSet()
        self._private: set[bytes] | None = None

    # -----------------------------------------------------------------------------------------
    # state

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    def key_count(self) -> int:
        return self._live

    def record_count(self) -> int:
        """History records retained (live and tombstones); for tests and metrics."""
        return sum(len(h) for h in self._hist.values())

    def check_read_revision(self, revision: int) -> None:
        """Raise if `revision` (> 0) cannot be read: compacted away or not yet written."""
        if revision > self._revision:
            raise FutureRevision(FUTURE_MESSAGE)
        if revision < self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE, self._compact_revision)

    # -----------------------------------------------------------------------------------------
    # reads

    def _keys_in(self, key: bytes, range_end: bytes) -> Iterable[bytes]:
        if not range_end:
            return (key,) if key in self._hist else ()
        if range_end == ALL_KEYS:
            return self._keys.irange(minimum=key)  # type: ignore[no-any-return]
        return self._keys.irange(  # type: ignore[no-any-return]
            minimum=key, maximum=range_end, inclusive=(True, False)
        )

    def _is_latest(self, revision: int | None) -> bool:
        return revision is None or (revision >= self._revision and not self._pending)

    @staticmethod
    def _at(history: list[KeyValue], revision: int) -> KeyValue | None:
        i = bisect_right(history, revision, key=_mod)
        return history[i - 1] if i else None

    def get(self, key: bytes, revision: int | None = None) -> KeyValue | None:
        """The live kv of `key` at `revision` (None = newest, including the running write)."""
        h = self._hist.get(key)
        if h is None:
            return None
        kv = h[-1] if self._is_latest(revision) else self._at(h, revision or 0)
        return kv if kv is not None and kv.version else None

    def range(self, key: bytes, range_end: bytes, revision: int | None = None) -> list[KeyValue]:
        """Live kvs selected by (key, range_end) at `revision`, in key order. The caller has
        checked the revision (`check_read_revision`)."""
        hist = self._hist
        out: list[KeyValue] = []
        if self._is_latest(revision):
            for k in self._keys_in(key, range_end):
                kv = hist[k][-1]
                if kv.version:
                    out.append(kv)
        else:
            rev = revision or 0
            for k in self._keys_in(key, range_end):
                at = self._at(hist[k], rev)
                if at is not None and at.version:
                    out.append(at)
        return out

    def live(self) -> Iterator[KeyValue]:
        """Every live kv at the newest revision, in key order."""
        hist = self._hist
        for k in self._keys:
            kv = hist[k][-1]
            if kv.version:
                yield kv

    def _event(self, key: bytes, revision: int) -> Event:
        h = self._hist[key]
        i = bisect_left(h, revision, key=_mod)
        kv = h[i]
        prev = h[i - 1] if i and h[i - 1].version else None
        return Event(EventType.PUT if kv.version else EventType.DELETE, kv, prev)

    def events_since(self, start_revision: int, key: bytes, range_end: bytes,
                     limit: int | None = None) -> list[Event]:
        """Logged events with revision >= start_revision on the selected keys, in log order;
        with `limit`, only the first revisions holding at least that many (whole revisions:
        it stops at the first revision boundary at or past `limit` events)."""
        if start_revision < self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE, self._compact_revision)
        out: list[Event] = []
        for i in range(bisect_left(self._log_revs, start_revision), len(self._log_revs)):
            if limit is not None and len(out) >= limit:
                break
            rev = self._log_revs[i]
            for k in self._log_keys[i]:
                if in_range(k, key, range_end):
                    out.append(self._event(k, rev))
        return out

    # -----------------------------------------------------------------------------------------
    # writes

    def begin(self) -> None:
        assert self._pending is None, "nested write"
        self._pending = []

    def end(self) -> bool:
        """Finish the running write; bump the revision iff it changed something."""
        pending = self._pending
        assert pending is not None, "end without begin"
        self._pending = None
        if not pending:
            return False
        self._revision += 1
        self._log_revs.append(self._revision)
        self._log_keys.append(tuple(pending))
        return True

    def put(self, key: bytes, value: bytes, lease: int) -> tuple[KeyValue, KeyValue | None]:
        """Write `key` at the running write's revision; returns (new kv, previous live kv)."""
        pending = self._pending
        assert pending is not None, "put outside a write"
        rev = self._revision + 1
        prev: KeyValue | None = None
        if key not in self._hist:
            h = self._hist[key] = []
            self._keys.add(key)
            if self._private is not None:
                self._private.add(key)
        else:
            h = self._writable(key)
            last = h[-1]
            assert last.mod_revision < rev, "key changed twice in one revision"
            if last.version:
                prev = last
            self._dirty.add(key)
        if prev is None:
            kv = KeyValue(key, rev, rev, 1, value, lease)
            self._live += 1
        else:
            kv = KeyValue(key, prev.create_revision, rev, prev.version + 1, value, lease)
        h.append(kv)
        pending.append(key)
        return kv, prev

    def _delete(
        self, key: bytes, prev: KeyValue, pending: list[bytes]
    ) -> tuple[KeyValue, KeyValue]:
        rev = self._revision + 1
        assert prev.mod_revision < rev, "key changed twice in one revision"
        tomb = tombstone(key, rev)
        self._writable(key).append(tomb)
        self._dirty.add(key)
        self._live -= 1
        pending.append(key)
        return tomb, prev

    def delete_range(self, key: bytes, range_end: bytes) -> list[tuple[KeyValue, KeyValue]]:
        """Delete the live selected keys (key order); returns (tombstone, deleted kv) pairs."""
        pending = self._pending
        assert pending is not None, "delete outside a write"
        victims = self.range(key, range_end)
        return [self._delete(kv.key, kv, pending) for kv in victims]

    def delete_keys(self, keys: Iterable[bytes]) -> list[tuple[KeyValue, KeyValue]]:
        """Delete the given keys that are live, in the given order."""
        pending = self._pending
        assert pending is not None, "delete outside a write"
        out: list[tuple[KeyValue, KeyValue]] = []
        for k in keys:
            kv = self.get(k)
            if kv is not None:
                out.append(self._delete(k, kv, pending))
        return out

    def compact(self, revision: int) -> None:
        """Drop history no read at >= `revision` needs. Caller checked
        compact_revision < revision <= self.revision."""
        assert self._pending is None, "compact inside a write"
        still_dirty: set[bytes] = set()
        for k in self._dirty:
            h = self._hist[k]
            i = bisect_left(h, revision, key=_mod)  # first record at >= revision
            if i and h[i - 1].version:
                i -= 1  # keep the newest older record if it is live
            if i:
                h = self._writable(k)
                del h[:i]
            if not h:
                del self._hist[k]
                self._keys.remove(k)
            elif len(h) > 1 or not h[-1].version:
                still_dirty.add(k)
        self._dirty = still_dirty
        j = bisect_left(self._log_revs, revision)
        del self._log_revs[:j]
        del self._log_keys[:j]
        self._compact_revision = revision

    def _writable(self, key: bytes) -> list[KeyValue]:
        """`key`'s history list, safe to change in place: if a view may share it, every view
        first keeps it as its own (the list never changes again) and the key space goes on
        with a copy."""
        h = self._hist[key]
        private = self._private
        if private is not None:
            if not self._views:
                self._private = None  # every view is gone: nothing is shared any more
            elif key not in private:
                for view in self._views:
                    view._keep(key, h)
                h = self._hist[key] = h.copy()
                private.add(key)
        return h

    # -----------------------------------------------------------------------------------------
    # views

    def freeze(self) -> KeySpaceView:
        """The state now, as an immutable view (outside a write). Costs one copy of the key
        list and no per-key work: the view reads the key space's own dict of histories, and a
        history is handed to the view (`_writable`) before its first change."""
        assert self._pending is None, "freeze inside a write"
        view = KeySpaceView(
            self._revision,
            self._compact_revision,
            self._hist,
            list(self._keys),
            list(self._log_revs),
            list(self._log_keys),
        )
        self._views.add(view)
        self._private = set()
        return view

    # -----------------------------------------------------------------------------------------
    # snapshot: [revision, compact_revision, [[key, [record, ...]], ...], [[rev, [key, ...]], ...]]
    # record: [mod] for a tombstone, [mod, create, version, value, lease] for a live kv.

    def to_obj(self) -> list[object]:
        return self.freeze().to_obj()

    @classmethod
    def from_obj(cls, x: object) -> KeySpace:
        """Inverse of `to_obj`; checks the invariants above, InvalidArgument if broken."""
        items = read_list(x, "key space", 4)
        ks = cls()
        revision = read_int(items[0], "revision")
        compact = read_int(items[1], "compact_revision")
        if revision < 1 or not 0 <= compact <= revision:
            raise InvalidArgument("corrupt snapshot: bad revisions")
        ks._revision, ks._compact_revision = revision, compact
        logged = 0  # records that must appear in the log
        previous_key: bytes | None = None
        for entry in read_list(items[2], "key histories"):
            pair = read_list(entry, "key history", 2)
            key = read_bytes(pair[0], "key")
            if previous_key is not None and key <= previous_key:
                raise InvalidArgument("corrupt snapshot: keys out of order")
            previous_key = key
            h: list[KeyValue] = []
            for rec in read_list(pair[1], "history record"):
                fields = read_list(rec, "history record")
                mod = read_int(fields[0] if fields else None, "mod_revision")
                if len(fields) == 1:
                    kv = tombstone(key, mod)
                elif len(fields) == 5:
                    kv = KeyValue(
                        key,
                        read_int(fields[1], "create_revision"),
                        mod,
                        read_int(fields[2], "version"),
                        read_bytes(fields[3], "value"),
                        read_int(fields[4], "lease"),
                    )
                    if kv.version < 1 or not 1 < kv.create_revision <= mod:
                        raise InvalidArgument("corrupt snapshot: bad key-value record")
                else:
                    raise InvalidArgument("corrupt snapshot: bad history record")
                if not 1 < mod <= revision or (h and mod <= h[-1].mod_revision):
                    raise InvalidArgument("corrupt snapshot: bad record revision")
                if mod >= compact:
                    logged += 1
                elif h or not kv.version:
                    raise InvalidArgument("corrupt snapshot: uncompacted old record")
                h.append(kv)
            if not h:
                raise InvalidArgument("corrupt snapshot: empty key history")
            ks._hist[key] = h
            if len(h) > 1 or not h[-1].version:
                ks._dirty.add(key)
            if h[-1].version:
                ks._live += 1
        ks._keys = SortedList(ks._hist)
        for entry in read_list(items[3], "change log"):
            pair = read_list(entry, "change log entry", 2)
            rev = read_int(pair[0], "log revision")
            if rev < compact or rev > revision or (ks._log_revs and rev <= ks._log_revs[-1]):
                raise InvalidArgument("corrupt snapshot: bad log revision")
            keys = tuple(read_bytes(k, "log key") for k in read_list(pair[1], "log keys"))
            if not keys or len(set(keys)) != len(keys):
                raise InvalidArgument("corrupt snapshot: bad log entry")
            for k in keys:
                h = ks._hist.get(k, [])
                i = bisect_left(h, rev, key=_mod)
                if i == len(h) or h[i].mod_revision != rev:
                    raise InvalidArgument("corrupt snapshot: log names a missing record")
                logged -= 1
            ks._log_revs.append(rev)
            ks._log_keys.append(keys)
        if logged:
            raise InvalidArgument("corrupt snapshot: log and histories disagree")
        return ks


class KeySpaceView:
    """A `KeySpace` frozen at one revision (`KeySpace.freeze`). Nothing in it changes after it
    is taken, so any thread may encode it while the key space goes on applying writes.

    How: its key and log lists are copies. Histories are read from the key space's own dict,
    unless the key space handed the view that key's history (`_keep`) before changing it, as it
    does on every first change after the view was taken (copy on write; a compaction that
    drops a key changes it first). The key space writes `_kept` before it replaces the dict's
    entry, and a reader reads the dict before `_kept` (`_history`): whichever it finds, the
    history is the one of the view's moment (dict and set operations are atomic under the
    GIL)."""

    __slots__ = (
        "__weakref__",
        "_compact_revision",
        "_hist",
        "_kept",
        "_keys",
        "_log_keys",
        "_log_revs",
        "_revision",
    )

    def __init__(
        self,
        revision: int,
        compact_revision: int,
        hist: dict[bytes, list[KeyValue]],
        keys: list[bytes],
        log_revs: list[int],
        log_keys: list[tuple[bytes, ...]],
    ) -> None:
        self._revision = revision
        self._compact_revision = compact_revision
        self._hist = hist  # the key space's, shared: read through `_history`
        self._kept: dict[bytes, list[KeyValue]] = {}
        self._keys = keys
        self._log_revs = log_revs
        self._log_keys = log_keys

    @property
    def revision(self) -> int:
        return self._revision

    def to_obj(self) -> list[object]:
        """The key space's snapshot form (see the format above `KeySpace.to_obj`)."""
        return [self._revision, self._compact_revision, list(self._histories()),
                list(self._log())]

    def parts(self) -> Iterator[object | ArrayHeader]:
        """`to_obj` for `pack_chunks`: one part per key history and per log entry."""
        yield ArrayHeader(4)
        yield self._revision
        yield self._compact_revision
        yield ArrayHeader(len(self._keys))
        yield from self._histories()
        yield ArrayHeader(len(self._log_revs))
        yield from self._log()

    def _keep(self, key: bytes, history: list[KeyValue]) -> None:
        """The key space is about to change `key`: `history` (never changed again) is the
        view's, if the view has not kept an older one already."""
        self._kept.setdefault(key, history)

    def _history(self, key: bytes) -> list[KeyValue]:
        h = self._hist.get(key)
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        assert h is not None, "a key of the view was dropped without being kept"
        return h

    def _histories(self) -> Iterator[list[object]]:
        for k in self._keys:
            recs: list[object] = [
                [kv.mod_revision, kv.create_revision, kv.version, kv.value, kv.lease]
                if kv.version
                else [kv.mod_revision]
                for kv in self._history(k)
            ]
            yield [k, recs]

    def _log(self) -> Iterator[list[object]]:
        for rev, ks in zip(self._log_revs, self._log_keys, strict=True):
            yield [rev, list(ks)]
