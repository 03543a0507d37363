"""Restoring a new cluster from a backup (`raftreg snapshot restore`), offline, like
`etcdutl snapshot restore`: each member's data dir is seeded with the backup's state before the
member first starts. The backup is verified first (`raftreg.store.backup.decode_backup`); nothing
is written if it is corrupt or foreign, or if any target data dir already holds raft data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raftreg.config import ClusterConfig
from raftreg.consensus import seed_data_dir
from raftreg.errors import FailedPrecondition
from raftreg.store import Store
from raftreg.store.backup import Backup, decode_backup


def restore_cluster(
    cfg: ClusterConfig, blob: bytes, names: Sequence[str] = ()
) -> tuple[Backup, list[Path]]:
    """Seed the data dirs of `names` (default: every node of `cfg`) with the backup in `blob`.
    Returns the verified backup and the seeded dirs. Seed every member of the new cluster,
    each from the same file."""
    backup = decode_backup(blob)
    nodes = [cfg.node(n) for n in names] if names else list(cfg.nodes)
    dirs = [cfg.data_dir(n) for n in nodes]
    for d in dirs:
        if d.exists() and any(p.name.startswith("raft.") for p in d.iterdir()):
            raise FailedPrecondition(
                f"{d} already holds raft data; restore only into new, empty data dirs"
            )
    # The old cluster's member records do not describe the new cluster: start without them.
    store = Store()
    store.restore(backup.state)
    store.forget_members()
    state = store.snapshot()
    members = [n.raft for n in cfg.nodes]
    for d in dirs:
        seed_data_dir(d, state, members)
    return backup, dirs
