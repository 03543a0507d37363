"""Watch validation against the committed history.

The *committed history* is every event the cluster committed, in revision order (the fault
tests read it after healing with a catch-up watch from revision 1 on every node, require all
nodes to agree, and check it on its own with `check_committed`). A watch recording
(`raftreg.testing.history.WatchRecord`) is then checked with `check_watch`:

- ordered: revisions strictly increase from one delivered revision to the next;
- no duplicates: a revision is never delivered twice (within a stream, and across the
  re-creates of a resumed watch);
- no gaps: between the start revision and the last delivered revision, every committed revision
  that touches the watched range is delivered;
- whole revisions: all the events of a revision on the range come in one response, exactly the
  committed ones (same kv, same order);
- resumes correctly: a re-created stream starts right after what was delivered, and by the end
  (`complete=True`) the watch has delivered everything committed on its range;
- prev_kv: with prev_kv requested, each event carries the key's previous kv (None when the key
  did not exist), as recomputed by replaying the committed history; without it, none.

Every function returns a list of human-readable violations (empty = fine).
"""

from __future__ import annotations

from collections.abc import Sequence

from raftreg.common.types import Event, EventType, KeyValue
from raftreg.testing.history import WatchRecord

ALL_KEYS = b"\0"


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == ALL_KEYS:
        return key >= start
    return start <= key < end


def _rev(e: Event) -> int:
    return e.kv.mod_revision


def _show(e: Event) -> str:
    kind = "PUT" if e.type == EventType.PUT else "DEL"
    return f"{kind} {e.kv.key!r}@{_rev(e)} v{e.kv.version} {e.kv.value!r}"


def replay_prev(events: Sequence[Event]) -> list[KeyValue | None]:
    """For each committed event, the key's kv just before it (None if absent)."""
    live: dict[bytes, KeyValue] = {}
    out: list[KeyValue | None] = []
    for e in events:
        out.append(live.get(e.kv.key))
        if e.type == EventType.PUT:
            live[e.kv.key] = e.kv
        else:
            live.pop(e.kv.key, None)
    return out


def final_state(events: Sequence[Event]) -> dict[bytes, KeyValue]:
    live: dict[bytes, KeyValue] = {}
    for e in events:
        if e.type == EventType.PUT:
            live[e.kv.key] = e.kv
        else:
            live.pop(e.kv.key, None)
    return live


def check_committed(events: Sequence[Event]) -> list[str]:
    """The committed history on its own: revisions never decrease, a key appears once per
    revision, versions and create revisions follow etcd's rules, deletes hit live keys, and the
    recorded prev_kv is the replayed one."""
    out: list[str] = []
    prevs = replay_prev(events)
    last = 0
    at_rev: set[bytes] = set()
    for e, prev in zip(events, prevs, strict=True):
        r = _rev(e)
        if r < last:
            out.append(f"committed history goes back: {_show(e)} after revision {last}")
        if r != last:
            at_rev = set()
        if e.kv.key in at_rev:
            out.append(f"committed history: key changed twice in one revision: {_show(e)}")
        at_rev.add(e.kv.key)
        last = max(last, r)
        if e.type == EventType.PUT:
            want_version = prev.version + 1 if prev is not None else 1
            want_create = prev.create_revision if prev is not None else r
            if e.kv.version != want_version or e.kv.create_revision != want_create:
                out.append(
                    f"committed history: {_show(e)} has version {e.kv.version}, create "
                    f"{e.kv.create_revision}; replay says {want_version}, {want_create}"
                )
        elif prev is None:
            out.append(f"committed history: delete of an absent key: {_show(e)}")
        if e.prev_kv is not None and e.prev_kv != prev:
            out.append(f"committed history: {_show(e)} prev_kv {e.prev_kv} != replayed {prev}")
        if len(out) > 20:
            break
    return out


def check_watch(
    rec: WatchRecord, committed: Sequence[Event], *, complete: bool, until: int | None = None
) -> list[str]:
    """Check one watch recording against the committed history (see the module docstring).
    With `until`, the committed history ends at that revision: later deliveries (the watch
    kept running while the history was read, e.g. a lease expiring after the sentinel write)
    are not judged."""
    name = rec.name
    prevs = replay_prev(committed)
    by_rev: dict[int, list[tuple[Event, KeyValue | None]]] = {}
    for e, p in zip(committed, prevs, strict=True):
        if in_range(e.kv.key, rec.key, rec.range_end):
            by_rev.setdefault(_rev(e), []).append((e, p))
    revs = sorted(by_rev)
    out: list[str] = []
    delivered: list[int] = []  # every delivered revision, across segments, in order

    def fail(msg: str) -> None:
        if len(out) < 20:
            out.append(f"watch {name}: {msg}")

    for seg_no, (start, batches) in enumerate(rec.segments):
        if seg_no and delivered and start != delivered[-1] + 1:
            fail(f"stream {seg_no} resumes at {start}, last delivered was {delivered[-1]}")
        seg_last = start - 1
        for header, all_events in batches:
            events = [e for e in all_events if until is None or _rev(e) <= until]
            if not events:
                continue
            groups: dict[int, list[Event]] = {}
            order: list[int] = []
            for e in events:
                if _rev(e) not in groups:
                    order.append(_rev(e))
                groups.setdefault(_rev(e), []).append(e)
            if order != sorted(order) or len(set(order)) != len(order):
                fail(f"revisions out of order inside one response: {order}")
            if header < order[-1]:
                fail(f"response header revision {header} < its last event revision {order[-1]}")
            for r in order:
                if r <= seg_last:
                    kind = "duplicate" if r in by_rev and r in delivered else "out of order"
                    fail(f"{kind}: revision {r} delivered after {seg_last}")
                    continue
                skipped = [x for x in revs if seg_last < x < r]
                if skipped:
                    fail(f"gap: revisions {skipped[:5]} missing between {seg_last} and {r}")
                seg_last = r
                if delivered and r <= delivered[-1]:
                    fail(f"duplicate across re-creates: revision {r} after {delivered[-1]}")
                delivered.append(r)
                want = by_rev.get(r)
                got = groups[r]
                if want is None:
                    fail(f"revision {r} delivered but nothing on the range committed there: "
                         f"{[_show(e) for e in got]}")
                    continue
                if [(e.type, e.kv) for e in got] != [(e.type, e.kv) for e, _ in want]:
                    fail(f"revision {r} not whole/equal: got {[_show(e) for e in got]}, "
                         f"committed {[_show(e) for e, _ in want]}")
                    continue
                for e, (_, p) in zip(got, want, strict=True):
                    if rec.prev_kv and e.prev_kv != p:
                        fail(f"prev_kv of {_show(e)} is {e.prev_kv}, replay says {p}")
                    if not rec.prev_kv and e.prev_kv is not None:
                        fail(f"prev_kv on {_show(e)} although not requested")
    if complete:
        first = rec.segments[0][0] if rec.segments else 1
        want_revs = [r for r in revs if r >= first]
        if want_revs and (not delivered or delivered[-1] < want_revs[-1]):
            last = delivered[-1] if delivered else None
            fail(
                f"incomplete: last delivered revision {last}, committed up to {want_revs[-1]}"
                + (f" ({rec.end_error})" if rec.end_error else "")
            )
    return out
