"""TEST ONLY: the harness side of power cuts: `Disk` (one mount: start its daemon, `freeze`,
`cut`, `unmount`), `Disks` (one per node of a cluster) and `cut_power` (freeze every disk,
kill the processes, then cut).

Each `Disk` talks to its daemon (`daemon.py`) over the daemon's stdin and stdout, one JSON
object a line; the daemon's stderr goes to `<store>/fuse.log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from raftreg.testing.powercut.mounts import fuse_available, fusermount, mounts_under, unmount_stale


class Disk:
    """One power-cut mount: `store/data` (backing) seen through `mountpoint`."""

    def __init__(self, store: Path, mountpoint: Path, *, real_sync: bool = True,
                 sync_delay_ms: float = 0.0, metadata: str = "strict") -> None:
        self.metadata = metadata
        self.store = Path(store)
        self.mountpoint = Path(os.path.realpath(mountpoint))
        self.real_sync = real_sync
        self.sync_delay_ms = sync_delay_ms
        self.proc: subprocess.Popen[str] | None = None
        self.cuts: list[dict[str, Any]] = []

    @property
    def mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mount(self, timeout: float = 15.0) -> None:
        if self.mounted:
            return
        why = fuse_available()
        if why is not None:
            raise RuntimeError(f"power cuts need FUSE: {why}")
        self.store.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.mountpoint in mounts_under(self.mountpoint):
            unmount_stale(self.mountpoint)
        if any(self.mountpoint.iterdir()):
            raise RuntimeError(f"{self.mountpoint} is not empty: it would be hidden by the mount")
        env = dict(os.environ, FUSE_LIBRARY_NAME="fuse3", PYTHONUNBUFFERED="1")
        with open(self.store / "fuse.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "raftreg.testing.powercut", "--store", str(self.store),
                 "--mount", str(self.mountpoint),
                 *([] if self.real_sync else ["--no-real-sync"]),
                 "--sync-delay-ms", str(self.sync_delay_ms), "--metadata", self.metadata],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )
        try:
            msg = self._read(timeout)
            if msg.get("event") != "ready":
                raise RuntimeError(f"power-cut daemon for {self.mountpoint} said {msg}")
        except BaseException:
            self.unmount()
            raise

    def _read(self, timeout: float) -> dict[str, Any]:
        p = self.proc
        assert p is not None and p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if ready else ""
        if not line:
            log = (self.store / "fuse.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"power-cut daemon for {self.mountpoint} did not answer "
                               f"(exit {p.poll()}); log tail:\n{log}")
        d: dict[str, Any] = json.loads(line)
        return d

    def _call(self, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        p = self.proc
        if p is None or p.poll() is not None or p.stdin is None:
            raise RuntimeError(f"{self.mountpoint} is not mounted")
        p.stdin.write(json.dumps(req) + "\n")
        p.stdin.flush()
        resp = self._read(timeout)
        if not resp.get("ok"):
            raise RuntimeError(f"power-cut daemon: {resp.get('error')}")
        return resp

    def status(self) -> dict[str, Any]:
        """What a cut would drop now: unsynced files and directories."""
        st: dict[str, Any] = self._call({"cmd": "status"})["status"]
        return st

    def freeze(self) -> None:
        """The power goes: every later operation fails with EIO, a sync under way never
        completes. Kill whoever uses the files next, then `cut`.

        (Killing first would not do: a process killed in the middle of an fsync that reached
        the daemon waits for its answer before it dies, so the sync would always complete.)"""
        self._call({"cmd": "freeze"})

    def cut(self, *, torn: bool = False, seed: int = 0) -> dict[str, Any]:
        """Drop every unsynced change (freezing first unless `freeze` was called; whoever
        uses the files must be dead by now) and unmount. `mount()` again to use what
        survived."""
        report: dict[str, Any] = self._call({"cmd": "cut", "torn": torn, "seed": seed})["report"]
        self.cuts.append(report)
        self.unmount()
        return report

    def unmount(self, timeout: float = 10.0) -> None:
        """Unmount and stop the daemon (idempotent; also after a failure)."""
        p, self.proc = self.proc, None
        deadline = time.monotonic() + timeout
        while self.mountpoint in mounts_under(self.mountpoint):
            if fusermount(self.mountpoint):
                break
            if time.monotonic() > deadline:
                fusermount(self.mountpoint, lazy=True)
                break
            time.sleep(0.05)
        if p is not None:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
            try:
                p.wait(timeout=max(0.5, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        unmount_stale(self.mountpoint)


def cut_power(disks: Disks, kill: Callable[[str], None], names: Sequence[str], *,
              torn: bool = False, seed: int = 0) -> dict[str, Any]:
    """A power cut of the processes `names` and their disks: every disk is frozen first (a sync
    under way never completes), then every process is killed (`kill`: kill -9 and reap), then
    each disk drops what was not synced and is unmounted. Returns what each disk lost."""
    for n in names:
        if disks[n].mounted:
            disks[n].freeze()
    for n in names:
        kill(n)
    return {n: disks[n].cut(torn=torn, seed=seed + i)
            for i, n in enumerate(names) if disks[n].mounted}


class Disks:
    """One `Disk` per name (a cluster's nodes): `<root>/disks/<name>` backs `mountpoint(name)`."""

    def __init__(self, root: Path, mountpoints: dict[str, Path], *, real_sync: bool = True,
                 sync_delay_ms: float = 0.0, metadata: str = "strict") -> None:
        self.root = Path(root)
        self.metadata = metadata
        self.real_sync = real_sync
        self.sync_delay_ms = sync_delay_ms
        self.disks: dict[str, Disk] = {}
        for n, m in mountpoints.items():
            self.add(n, m)

    def add(self, name: str, mountpoint: Path) -> None:
        self.disks[name] = Disk(self.root / "disks" / name, mountpoint,
                                real_sync=self.real_sync, sync_delay_ms=self.sync_delay_ms,
                                metadata=self.metadata)

    def __getitem__(self, name: str) -> Disk:
        return self.disks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.disks)

    def close(self) -> None:
        errors = []
        for d in self.disks.values():
            try:
                d.unmount()
            except Exception as e:  # every mount gets its chance
                errors.append(e)
        if errors:
            raise errors[0]
