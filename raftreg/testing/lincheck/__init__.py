"""A linearizability checker (Wing & Gong / Lowe / Porcupine style) with register and KV models.

This package owns the checker and nothing else: `contract` (what a history and a model are:
`Operation`, `UNKNOWN` for an indeterminate operation's output, `Model`, `ModelBase`), `search`
(`check` and its verdicts: Lowe's just-in-time linearization, per partition, with memoised
configurations) and `models` (`RegisterModel` for Jepsen's cas-register, `KVModel` for
etcd-style keys, per key).
"""

from raftreg.testing.lincheck.contract import UNKNOWN, Model, ModelBase, Operation
from raftreg.testing.lincheck.models import (
    Cas,
    Delete,
    Get,
    KVModel,
    KVState,
    Put,
    RegisterInput,
    RegisterModel,
)
from raftreg.testing.lincheck.search import CheckResult, PartitionResult, check

__all__ = [
    "UNKNOWN",
    "Cas",
    "CheckResult",
    "Delete",
    "Get",
    "KVModel",
    "KVState",
    "Model",
    "ModelBase",
    "Operation",
    "PartitionResult",
    "Put",
    "RegisterInput",
    "RegisterModel",
    "check",
]
