"""TEST ONLY: one file's data changes since its last sync, and how a power cut undoes them.

From a file's first unsynced change to its next fsync it has an `Unsynced`: its durable size
and, for each 4 KiB block below that size changed since, the block's durable bytes (copy on
first unsynced write). A file appended to and fsync'ed over and over (a WAL) therefore costs
nothing but the size.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 4096


@dataclass
class Unsynced:
    """A file changed since its last fsync: its durable size and the durable bytes of every
    block below that size that changed since (saved before the first change)."""

    durable_size: int
    undo: dict[int, bytes] = field(default_factory=dict)

    def save(self, fd: int, start: int, end: int) -> None:
        """Before [start, end) of the file open as `fd` changes: keep the durable bytes of each
        block of it below the durable size that has not been saved since the last sync."""
        end = min(end, self.durable_size)
        if start >= end:
            return
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            if b not in self.undo:
                n = min(BLOCK, self.durable_size - b * BLOCK)
                data = os.pread(fd, n, b * BLOCK)
                self.undo[b] = data + b"\0" * (n - len(data))  # a hole or a shorter live file

    def restore(self, path: Path, rng: random.Random | None) -> dict[str, int]:
        """Put the file at `path` back to its durable content (plus, with `rng`, a torn cut: a
        random prefix of its unsynced tail, whose end is sometimes zeroed)."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            tail = b""
            if rng is not None and size > self.durable_size:
                keep = rng.randint(0, size - self.durable_size)
                tail = os.pread(fd, keep, self.durable_size)
                if tail and rng.random() < 0.3:  # the size reached the disk, the data did not
                    z = rng.randint(1, min(len(tail), BLOCK))
                    tail = tail[:-z] + b"\0" * z
            for b, data in self.undo.items():
                os.pwrite(fd, data, b * BLOCK)
            os.ftruncate(fd, self.durable_size)
            if tail:
                os.pwrite(fd, tail, self.durable_size)
            return {"size": size, "durable_size": self.durable_size,
                    "kept": self.durable_size + len(tail), "blocks_restored": len(self.undo)}
        finally:
            os.close(fd)
