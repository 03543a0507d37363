"""TEST ONLY: FUSE mounts on this machine: whether they can work here, which are mounted under
a directory, and unmounting them (`fusermount3 -u`), for the power-cut daemon and its harness."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

FUSERMOUNT = "fusermount3"


def fuse_available() -> str | None:
    """None if FUSE mounts can work here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which(FUSERMOUNT) is None:
        return f"{FUSERMOUNT} is not installed (scripts/test-deps.sh installs fuse3)"
    try:
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy or libfuse3 is missing: {e}"
    return None


def mounts_under(root: Path) -> list[Path]:
    """FUSE mount points at or below `root` (from /proc/self/mountinfo), deepest first."""
    base = os.path.realpath(root)
    out: list[Path] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mnt = parts[4].replace("\\040", " ")
            if parts[sep + 1].startswith("fuse") and (mnt == base or
                                                       mnt.startswith(base + "/")):
                out.append(Path(mnt))
    return sorted(out, key=lambda p: -len(str(p)))


def fusermount(mountpoint: str | Path, lazy: bool = False) -> bool:
    args = [FUSERMOUNT, "-u", "-q", *(["-z"] if lazy else []), str(mountpoint)]
    return subprocess.run(args, capture_output=True, check=False).returncode == 0


def unmount_stale(root: Path) -> list[Path]:
    """Unmount every FUSE mount at or below `root` (left by a crashed run); returns them."""
    found = mounts_under(root)
    for m in found:
        if not fusermount(m):
            fusermount(m, lazy=True)
    return found
