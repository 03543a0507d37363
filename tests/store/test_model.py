"""Hypothesis state machine: Store against a plain reference model (key -> list of versions)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    EventType,
    KeyValue,
    Put,
    PutResult,
    Range,
    Txn,
    TxnResult,
)
from raftreg.store import Compact, Done, Failure, Request, Store

KEYS = [b"a", b"b", b"ba", b"c", b"d"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=3)
# (key, range_end) selections: single key, bounded range, from-key, everything
selections = st.one_of(
    st.tuples(keys, st.just(b"")),
    st.tuples(keys, keys).map(lambda t: (min(t), max(t))),
    st.tuples(keys, st.just(b"\0")),
    st.just((b"", b"\0")),
)


def _selected(k: bytes, key: bytes, end: bytes) -> bool:
    if not end:
        return k == key
    if end == b"\0":
        return k >= key
    return key <= k < end


class Model:
    """Full history, never compacted; compaction only limits what may be read."""

    def __init__(self) -> None:
        self.revision = 1
        self.compact = 0
        self.history: dict[bytes, list[KeyValue | None]] = {k: [] for k in KEYS}  # None=deleted
        self.revs: dict[bytes, list[int]] = {k: [] for k in KEYS}
        self.events: list[tuple[int, EventType, bytes, bytes]] = []

    def at(self, key: bytes, revision: int) -> KeyValue | None:
        found: KeyValue | None = None
        for rev, kv in zip(self.revs[key], self.history[key], strict=True):
            if rev <= revision:
                found = kv
        return found

    def current(self, key: bytes) -> KeyValue | None:
        h = self.history[key]
        return h[-1] if h else None

    def range(self, key: bytes, end: bytes, revision: int) -> list[KeyValue]:
        out = [self.at(k, revision) for k in sorted(KEYS) if _selected(k, key, end)]
        return [kv for kv in out if kv is not None]

    def write(self, rev: int, key: bytes, kv: KeyValue | None) -> None:
        self.history[key].append(kv)
        self.revs[key].append(rev)
        if kv is None:
            self.events.append((rev, EventType.DELETE, key, b""))
        else:
            self.events.append((rev, EventType.PUT, key, kv.value))

    def put(self, rev: int, key: bytes, value: bytes) -> None:
        old = self.current(key)
        if old is None:
            kv = KeyValue(key, rev, rev, 1, value, 0)
        else:
            kv = KeyValue(key, old.create_revision, rev, old.version + 1, value, 0)
        self.write(rev, key, kv)

    def delete(self, rev: int, key: bytes, end: bytes) -> int:
        victims = [kv.key for kv in self.range(key, end, rev)]
        for k in victims:
            self.write(rev, k, None)
        return len(victims)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store()
        self.model = Model()
        self.last_revision = 1

    def apply(self, command: Put | DeleteRange | Txn | Compact) -> object:
        result, _ = self.store.apply(Request(command))
        return result

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        result = self.apply(Put(key, value))
        self.model.revision += 1
        self.model.put(self.model.revision, key, value)
        assert result == PutResult(self.model.revision)

    @rule(sel=selections)
    def delete(self, sel: tuple[bytes, bytes]) -> None:
        result = self.apply(DeleteRange(*sel))
        n = self.model.delete(self.model.revision + 1, *sel)
        self.model.revision += 1 if n else 0
        assert result == DeleteResult(self.model.revision, n)

    @rule(
        key=keys,
        version=st.integers(0, 3),
        put_key=keys,
        value=values,
        del_sel=selections,
    )
    def txn(
        self, key: bytes, version: int, put_key: bytes, value: bytes, del_sel: tuple[bytes, bytes]
    ) -> None:
        compare = Compare(key, CompareTarget.VERSION, CompareResult.EQUAL, version)
        txn = Txn((compare,), (Put(put_key, value), Range(put_key)), (DeleteRange(*del_sel),))
        result = self.apply(txn)
        current = self.model.current(key)
        holds = (current.version if current else 0) == version
        rev = self.model.revision + 1
        if holds:
            self.model.put(rev, put_key, value)
            self.model.revision = rev
            assert isinstance(result, TxnResult) and result.succeeded
            assert result.responses[1] == self.store.range(Range(put_key))
        else:
            if self.model.delete(rev, *del_sel):
                self.model.revision = rev
            assert isinstance(result, TxnResult) and not result.succeeded
        assert result.revision == self.model.revision

    @rule(offset=st.integers(-2, 3))
    def compact(self, offset: int) -> None:
        target = self.model.revision - offset
        if target <= 0:
            return
        result = self.apply(Compact(target))
        if target <= self.model.compact:
            assert isinstance(result, Failure) and result.kind == "Compacted"
            assert result.compact_revision == self.model.compact
        elif target > self.model.revision:
            assert isinstance(result, Failure) and result.kind == "FutureRevision"
        else:
            assert result == Done(self.model.revision)
            self.model.compact = target

    @rule(sel=selections, back=st.integers(0, 8))
    def range_at_revision(self, sel: tuple[bytes, bytes], back: int) -> None:
        rev = max(self.model.revision - back, self.model.compact, 1)
        got = self.store.range(Range(sel[0], sel[1], revision=rev))
        assert list(got.kvs) == self.model.range(sel[0], sel[1], rev)
        assert got.revision == self.model.revision

    @rule(sel=selections)
    def events(self, sel: tuple[bytes, bytes]) -> None:
        start = max(self.model.compact, 1)
        got = [
            (e.kv.mod_revision, e.type, e.kv.key, e.kv.value)
            for e in self.store.events_since(start, *sel)
        ]
        want = [e for e in self.model.events if e[0] >= start and _selected(e[2], *sel)]
        assert got == want

    @precondition(lambda self: self.model.revision > 1)
    @rule()
    def snapshot_round_trip(self) -> None:
        snap = self.store.snapshot()
        restored = Store()
        restored.restore(snap)
        assert restored.snapshot() == snap
        assert restored.hash() == self.store.hash()
        for rev in range(max(self.model.compact, 1), self.model.revision + 1):
            q = Range(b"", b"\0", revision=rev)
            assert restored.range(q) == self.store.range(q)
        self.store = restored  # carry on with the restored replica

    @invariant()
    def revision_matches(self) -> None:
        assert self.store.revision == self.model.revision
        assert self.store.revision >= self.last_revision
        self.last_revision = self.store.revision
        assert self.store.compact_revision == self.model.compact
        live = self.model.range(b"", b"\0", self.model.revision)
        assert self.store.key_count() == len(live)
        assert list(self.store.range(Range(b"", b"\0")).kvs) == live


StoreMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestStoreModel = StoreMachine.TestCase
