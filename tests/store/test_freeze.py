"""`Store.freeze`: a view taken now encodes, later, exactly the snapshot of now, however many
writes, deletes, compactions and lease changes were applied meanwhile; and taking views never
changes what the store itself holds."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.common.types import DeleteRange, Put
from raftreg.store import Command, Compact, LeaseExpire, LeaseGrant, Request, Store

KEYS = [b"a", b"b", b"ba", b"c"]

ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=2), st.integers(0, 2)),
    st.tuples(st.just("del"), st.sampled_from(KEYS), st.sampled_from([b"", b"c", b"\0"])),
    st.tuples(st.just("compact"), st.integers(0, 3)),
    st.tuples(st.just("grant"), st.integers(1, 2)),
    st.tuples(st.just("expire"), st.integers(1, 2)),
    st.tuples(st.just("freeze")),
)


def _command(store: Store, op: tuple[object, ...]) -> Command | None:
    match op:
        case ("put", key, value, lease):
            return Put(key, value, lease=lease)  # type: ignore[arg-type]
        case ("del", key, end):
            return DeleteRange(key, end)  # type: ignore[arg-type]
        case ("compact", back):
            return Compact(max(1, store.revision - back))  # type: ignore[operator]
        case ("grant", lease):
            return LeaseGrant(lease, 10)  # type: ignore[arg-type]
        case ("expire", lease):
            return LeaseExpire((lease,), 0)  # type: ignore[arg-type]
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_every_view_encodes_the_snapshot_of_its_moment(script: list[tuple[object, ...]]) -> None:
    store, replay = Store(), Store()
    views = []
    for i, op in enumerate(script):
        command = _command(store, op)
        if command is None:  # freeze
            views.append((store.freeze(), store.snapshot()))
            if i % 3 == 0:
                gc.collect()  # views that are gone stop the copying; the rest stay intact
            continue
        store.apply(Request(command, client_id=7, seq=i + 1))
        replay.apply(Request(command, client_id=7, seq=i + 1))
    for view, snapshot in views:
        assert view.encode() == snapshot
    # copy-on-write never leaked into the store's own state
    assert store.snapshot() == replay.snapshot()
    restored = Store()
    restored.restore(store.snapshot())
    assert restored.snapshot() == store.snapshot()


def test_a_view_shares_histories_until_they_change() -> None:
    store = Store()
    for i in range(3):
        store.apply(Request(Put(b"k%d" % i, b"v")))
    before = store.snapshot()
    view = store.freeze()
    store.apply(Request(Put(b"k0", b"w")))
    store.apply(Request(DeleteRange(b"k1")))
    store.apply(Request(Compact(store.revision)))
    assert view.revision == 4
    assert view.encode() == before
    assert store.snapshot() != before
