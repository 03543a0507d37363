"""TEST ONLY: the power-cut FUSE daemon, one process per mount: `python -m
raftreg.testing.powercut --store <store> --mount <mount point>` serves a `DiskModel` over
`<store>/data` at the mount point (mfusepy, libfuse3, `auto_unmount`).

Protocol with the harness (`disk.Disk`): the daemon writes ``{"event": "ready", "pid": ...}``
once mounted, then answers each command line on stdin (``freeze``, ``cut`` with ``torn`` and
``seed``, ``status``) with one JSON line ``{"ok": ...}``. EOF on stdin (the harness died):
unmount and exit, so no mount outlives its test.

Not supported (ENOSYS): hard links, symlinks, device nodes, fallocate (callers fall back to
writing), xattrs. Metadata (mode, times) passes through and is not modelled. Shared writable
mmap works: the mount keeps the kernel page cache (no direct_io), dirty pages reach the daemon
as writes, msync and fsync as fsync.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from raftreg.testing.powercut.model import METADATA_MODELS, DiskModel
from raftreg.testing.powercut.mounts import fusermount


def _ops_class() -> type[Any]:
    import mfusepy

    class PowerCutOps(mfusepy.Operations):  # type: ignore[misc]
        """mfusepy adapter over `DiskModel` (paths in, backing descriptors as handles)."""

        use_ns = True

        def __init__(self, model: DiskModel, ready: threading.Event) -> None:
            self.m = model
            self.ready = ready

        def init(self, path: str) -> None:
            self.ready.set()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self.m.path(path))
            return {
                "st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_ino": st.st_ino,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns, "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *sorted(os.listdir(self.m.path(path)))]

        def access(self, path: str, amode: int) -> int:
            if not os.access(self.m.path(path), amode):
                raise OSError(errno.EACCES, "access denied")
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self.m.root)
            return {k: getattr(sv, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")}

        def chmod(self, path: str, mode: int) -> int:
            self.m.metadata_change()
            os.chmod(self.m.path(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self.m.metadata_change()
            os.chown(self.m.path(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            self.m.metadata_change()
            if times is None:
                os.utime(self.m.path(path))
            else:
                os.utime(self.m.path(path), ns=times)
            return 0

        def create(self, path: str, mode: int, flags: int) -> int:
            return self.m.create(path, mode, flags)

        def open(self, path: str, flags: int) -> int:
            return self.m.open(path, flags)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return self.m.read(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return self.m.write(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self.m.truncate(path, length, fh)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self.m.fsync(fh, bool(datasync))
            return 0

        def release(self, path: str, fh: int) -> int:
            self.m.release(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            self.m.fsyncdir(path)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self.m.mkdir(path, mode)
            return 0

        def unlink(self, path: str) -> int:
            self.m.unlink(path)
            return 0

        def rmdir(self, path: str) -> int:
            self.m.rmdir(path)
            return 0

        def rename(self, old: str, new: str) -> int:
            self.m.rename(old, new)
            return 0

    return PowerCutOps


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _control(model: DiskModel, mountpoint: str) -> None:
    """Commands from the harness, one JSON object a line on stdin; EOF: unmount and exit."""
    for line in sys.stdin:
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "freeze":
                model.freeze()
                _reply({"ok": True})
            elif cmd == "cut":
                _reply({"ok": True, "report": model.cut(bool(req.get("torn")),
                                                          int(req.get("seed", 0)))})
            elif cmd == "status":
                _reply({"ok": True, "status": model.status()})
            else:
                _reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:
            _reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    # the harness is gone: nobody will ever cut or unmount this one
    fusermount(mountpoint, lazy=True)


def serve(store: Path, mountpoint: Path, *, real_sync: bool = True,
          sync_delay_s: float = 0.0, metadata: str = "strict") -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    model = DiskModel(store, real_sync=real_sync, sync_delay_s=sync_delay_s, metadata=metadata)
    ready = threading.Event()

    def announce() -> None:
        if ready.wait(30):
            _reply({"event": "ready", "pid": os.getpid()})
            _control(model, str(mountpoint))

    threading.Thread(target=announce, name="control", daemon=True).start()
    mfusepy.FUSE(_ops_class()(model, ready), str(mountpoint), foreground=True,
                 fsname="powercut", subtype="powercut", auto_unmount=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m raftreg.testing.powercut",
                                 description="TEST ONLY power-cut FUSE daemon")
    ap.add_argument("--store", required=True, help="backing store (data/ holds the files)")
    ap.add_argument("--mount", required=True, help="mount point (the node's data dir)")
    ap.add_argument("--no-real-sync", action="store_true",
                    help="do not pass fsyncs through to the backing file system")
    ap.add_argument("--sync-delay-ms", type=float, default=0.0,
                    help="every fsync takes this much longer (a slower disk)")
    ap.add_argument("--metadata", choices=METADATA_MODELS, default="strict",
                    help="strict: an entry is durable once its directory is synced; ordered: "
                         "any sync makes every earlier namespace change durable (ext4)")
    ns = ap.parse_args(argv)
    serve(Path(ns.store), Path(ns.mount), real_sync=not ns.no_real_sync,
          sync_delay_s=ns.sync_delay_ms / 1000.0, metadata=ns.metadata)
