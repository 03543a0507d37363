"""TEST ONLY power cuts: a FUSE file system that forgets every write its user had not synced.

A node's data dir is the mount point of a small FUSE file system (one daemon process per node,
`python -m raftreg.testing.powercut`) that passes every operation through to a backing
directory and keeps track of what a real disk would still hold after the power went, as
Jepsen's LazyFS does for etcd. The node's own code never decides what counts as synced:

- file data (writes, truncations) is durable once the file is fsync'ed or fdatasync'ed (any
  descriptor of it, or msync of a shared mapping, which reaches FUSE as an fsync);
- a directory entry (create, mkdir, rename, unlink, rmdir) is durable once the directory that
  holds it is fsync'ed. A rename between two directories is atomic, as in a journaling file
  system: syncing either directory makes both of its halves durable;
- everything on the backing directory when the daemon starts is durable.

That is the strict (POSIX) model, the default. `metadata="ordered"` models a journaling file
system such as ext4 (data=ordered), where one journal commits metadata in order: ANY fsync,
fdatasync or directory fsync also makes every earlier create, rename, unlink, mkdir and rmdir
durable, in every directory (file data still needs that file's own sync). Software that never
fsyncs a directory it creates files in survives there, but not under the strict model.

A power cut (the daemon's ``cut`` command): every later operation fails with EIO (so the dirty
pages of a killed process that the kernel writes back afterwards never land), the backing
directory is rebuilt to hold exactly the durable state (files at their last synced content and
size, unsynced creates, renames and unlinks undone), and the daemon is unmounted. A new daemon
mounted on the result is what the node restarts on. With ``torn=True`` the cut is a little
kinder, as real disks are: each file keeps a random prefix of what was appended after its last
sync (the tail of that prefix sometimes zeroed: the size reached the disk, the data did not),
and each directory's unsynced entries survive with probability 1/2 (all of that directory's
entries, as if it had been synced).

This package owns the power-cut file system and nothing else; its modules:

- `unsynced`: one file's data changes since its last sync (copy-on-first-write undo blocks)
  and how a cut undoes them;
- `model`: `DiskModel`, the pass-through operations on the backing directory that track the
  durable state of data and directory entries, and the cut that rebuilds it;
- `daemon`: the FUSE adapter over a `DiskModel` and the daemon's command loop (`__main__`
  runs it);
- `mounts`: whether FUSE works here, finding and unmounting FUSE mounts;
- `disk`: the harness: `Disk` (one mount: `mount`, `freeze`, `cut`, `unmount`), `Disks` (one
  per node) and `cut_power`.

A daemon exits and unmounts when its stdin closes (the test process died), and is mounted with
fuse's `auto_unmount`, so even a kill -9 of the daemon leaves no mount behind; `Disks.close()`
unmounts everything and `unmount_stale(root)` clears mounts a crashed run left under a
directory.
"""

from raftreg.testing.powercut.disk import Disk, Disks, cut_power
from raftreg.testing.powercut.model import METADATA_MODELS, DiskModel
from raftreg.testing.powercut.mounts import fuse_available, mounts_under, unmount_stale
from raftreg.testing.powercut.unsynced import BLOCK

__all__ = [
    "BLOCK",
    "METADATA_MODELS",
    "Disk",
    "DiskModel",
    "Disks",
    "cut_power",
    "fuse_available",
    "mounts_under",
    "unmount_stale",
]
