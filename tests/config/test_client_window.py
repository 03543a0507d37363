"""The request-identity window: one constant is the default of the cluster setting, of the
store and of the gRPC client's write window; the setting reaches the node's store."""

from __future__ import annotations

import asyncio

import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.common.types import Put
from raftreg.config import DEFAULT_CLIENT_WINDOW, ClusterConfig, parse_config
from raftreg.consensus import Consensus, LocalConsensus, StateMachine
from raftreg.errors import InvalidArgument
from raftreg.server.node import RegistryNode
from raftreg.store import Store
from raftreg.store.commands import Failure, Request

NODE = {"name": "n1", "raft": "local:1", "client": "local:2"}


def _cfg(**cluster: object) -> ClusterConfig:
    return parse_config({"cluster": {"secret": "x" * 32, **cluster}, "node": [NODE]})


def _too_old(store: Store, window: int) -> bool:
    """Whether `store` refuses seq 1 of a client after seqs 1..window + 1 were applied."""
    for seq in range(1, window + 2):
        store.apply(Request(Put(b"k", b"v"), client_id=7, seq=seq))
    assert not isinstance(store.apply(Request(Put(b"k", b"v"), client_id=7, seq=2))[0], Failure)
    result = store.apply(Request(Put(b"k", b"v"), client_id=7, seq=1))[0]
    return isinstance(result, Failure) and result.message == "request id too old"


def test_one_default_for_the_setting_the_store_and_the_client() -> None:
    assert _cfg().settings.client_window == DEFAULT_CLIENT_WINDOW
    assert GrpcRegistryClient(["127.0.0.1:1"]).seq_window.window == DEFAULT_CLIENT_WINDOW
    assert _too_old(Store(), DEFAULT_CLIENT_WINDOW)


def test_client_window_is_a_cluster_setting_checked_at_load() -> None:
    assert _cfg(client_window=8).settings.client_window == 8
    with pytest.raises(InvalidArgument, match="client_window must be >= 1"):
        _cfg(client_window=0)


async def test_the_node_store_uses_the_setting() -> None:
    def consensus(sm: StateMachine) -> Consensus:
        return LocalConsensus(sm, "local:1")

    node = RegistryNode(_cfg(client_window=3), "n1", loop=asyncio.get_running_loop(),
                        consensus=consensus)
    try:
        assert _too_old(node.store, 3)
    finally:
        node.close()
