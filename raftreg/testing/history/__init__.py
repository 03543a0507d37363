"""TEST ONLY: recorded client histories for the fault tests, and the concurrent workload that
makes them.

This package owns: `records` (`Op`, `History` and its lincheck view, `WatchRecord`, the keys the
workload touches), `watchers` (the recorded raw and client watches) and `workload`
(`Workload`, `WorkloadConfig`: register, lease and watch clients against raftreg or etcd).
The checks live elsewhere: `raftreg.testing.lincheck` and `raftreg.testing.watchcheck`.
"""

from raftreg.testing.history.records import (
    LEASED,
    PREFIX,
    REG,
    WRITE_KINDS,
    History,
    Op,
    Outcome,
    WatchRecord,
)
from raftreg.testing.history.watchers import CHANNEL_OPTIONS, client_watch, raw_watch
from raftreg.testing.history.workload import BACKENDS, Workload, WorkloadConfig

__all__ = [
    "BACKENDS",
    "CHANNEL_OPTIONS",
    "LEASED",
    "PREFIX",
    "REG",
    "WRITE_KINDS",
    "History",
    "Op",
    "Outcome",
    "WatchRecord",
    "Workload",
    "WorkloadConfig",
    "client_watch",
    "raw_watch",
]
