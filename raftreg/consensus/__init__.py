"""Consensus: the only package that imports PySyncObj.

It owns replication of opaque commands (`RaftNode.propose`), linearizable read barriers
(ReadIndex rounds, read_index.py), membership/status views and the raft persistence files
(journal + msgpack dump) of one node.
`Consensus` (protocol.py) is the seam a registry node sees; `RaftNode` is the real one and
`LocalConsensus` (local.py) its in-process, single-member twin for tests. `RaftNode` (raft.py,
the event-loop side) drives `_Fsm` (fsm.py, the PySyncObj subclass on the tick thread); the
dump file format is dump.py's, the log journal.py's, the peer wire peer.py's.
"""

from raftreg.consensus.dump import seed_data_dir
from raftreg.consensus.fsm import FaultInjection
from raftreg.consensus.local import LocalConsensus
from raftreg.consensus.protocol import Consensus, ConsensusFactory, StateMachine
from raftreg.consensus.raft import RaftNode, RaftSettings
from raftreg.consensus.status import RaftStatus

__all__ = [
    "Consensus",
    "ConsensusFactory",
    "FaultInjection",
    "LocalConsensus",
    "RaftNode",
    "RaftSettings",
    "RaftStatus",
    "StateMachine",
    "seed_data_dir",
]
