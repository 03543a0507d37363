"""Consensus: the only package that imports PySyncObj.

It owns replication of opaque commands (`RaftNode.propose`), linearizable read barriers,
membership/status views and the raft persistence files (journal + msgpack dump) of one node.
"""

from raftreg.consensus.raft import RaftNode, RaftSettings, RaftStatus, seed_data_dir

__all__ = ["RaftNode", "RaftSettings", "RaftStatus", "seed_data_dir"]
