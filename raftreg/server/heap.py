"""Keeping the large, short-lived copy a store view makes out of Python's cyclic collector.

A store view (`Store.freeze()`, for a raft dump or a backup) copies the list of every key (and
until 2026-12-06 the dict of every key's history too). Being young, the copy is traversed whole
by the next young collections: 9-20 ms each at 1,000,000 keys (34-48 ms with the dict; measured
in-process), longer beside a dump thread. `hold_collector(owner)` freezes the collector's
heap (`gc.freeze()`: every tracked object moves to the permanent generation, which no
collection traverses) while any holder is alive, and unfreezes it (`gc.unfreeze()`: all of it
back into the oldest generation) when the last is gone.

Contracts:
- Counted over the process (the collector is one per process), thread-safe; a hold ends when
  its owner is garbage (`weakref.finalize`), so a view dropped on any path, encoded or not,
  ends it.
- Nothing leaks: an object that became cyclic garbage during a hold is in the oldest
  generation afterwards and goes with its next collection; objects allocated during a hold
  are collected as usual.
- The process's own `gc.freeze()` at start-up (raftreg.daemon) is undone by the first hold's
  end: what it froze then lies in the oldest generation, which only full collections traverse.
"""

from __future__ import annotations

import gc
import threading
import weakref

_lock = threading.Lock()
_holders = 0


def hold_collector(owner: object) -> None:
    """Keep the current heap out of every collection until `owner` is garbage."""
    global _holders
    with _lock:
        if _holders == 0:
            gc.freeze()
        _holders += 1
    weakref.finalize(owner, _release)


def _release() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()


def holders() -> int:
    """How many holds are in force (for tests)."""
    return _holders
