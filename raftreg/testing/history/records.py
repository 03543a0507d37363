"""TEST ONLY: recorded client histories: one `Op` per client operation in a `History`, and one
`WatchRecord` per watch, plus the keys the workload touches (`PREFIX`, `REG`, `LEASED`).

A `History` holds one `Op` per client operation: who issued it, its invocation and completion
times (`time.monotonic()`, which on Linux is one clock for every process on the machine, so
client times compare with the lease deadlines the leader keeps), its input, its output and its
outcome:

- ``ok``: the response was seen (`output` holds it, `revision` the header revision of a write);
- ``fail``: the operation certainly had no effect (a refused write: `NotApplied`, or an error
  outside `Unavailable` such as `InvalidArgument`); reads that failed are kept as ``fail`` too
  and are simply not checked;
- ``unknown``: a write whose fate is ambiguous (`OutcomeUnknown`, a deadline, any other
  `Unavailable`): it may have applied at any time after its call, or never (``ret is None``).

`History.lincheck_ops()` turns the register part (a few keys, every value unique) into
`raftreg.testing.lincheck` operations for the per-key `KVModel`.
"""


from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from raftreg import errors as E
from raftreg.common.types import Event
from raftreg.testing import lincheck as L

Outcome = Literal["ok", "fail", "unknown"]
PREFIX = "/f/"  # every key the workload touches
REG = PREFIX + "r/"  # register keys (linearizability-checked)
LEASED = PREFIX + "l/"  # keys attached to leases
WRITE_KINDS = frozenset({"put", "delete", "cas", "lease_grant", "lease_put", "lease_revoke"})


@dataclass(slots=True)
class Op:
    id: int
    client: int
    kind: str  # get put delete cas | lease_grant lease_put lease_keepalive lease_revoke lease_get
    key: str
    call: float
    value: str | None = None  # put / cas new value
    expected: str | None = None  # cas: expected value
    lease: int = 0
    ret: float | None = None
    outcome: Outcome = "unknown"
    output: Any = None  # get: value or None; delete: deleted; cas: succeeded; keepalive: ttl
    revision: int = 0  # header revision of a completed write
    error: str = ""
    endpoint: str = ""  # the only endpoint of a pinned client, "" = any


def _classify(e: BaseException, write: bool) -> tuple[Outcome, str]:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, E.Unavailable | E.DeadlineExceeded | TimeoutError) and not isinstance(
        e, E.NotApplied
    ):
        return ("unknown" if write else "fail"), text
    if isinstance(e, E.RegistryError):
        return "fail", text
    return ("unknown" if write else "fail"), "UNEXPECTED " + text


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # found while running (lease checks)
    unexpected: list[str] = field(default_factory=list)  # exceptions outside the error tree

    def invoke(self, client: int, kind: str, key: str, **kw: Any) -> Op:
        op = Op(len(self.ops), client, kind, key, time.monotonic(), **kw)
        self.ops.append(op)
        return op

    def ok(self, op: Op, output: Any = None, revision: int = 0) -> None:
        op.ret, op.outcome, op.output, op.revision = time.monotonic(), "ok", output, revision

    def failed(self, op: Op, e: BaseException) -> None:
        op.outcome, op.error = _classify(e, op.kind in WRITE_KINDS)
        if op.outcome == "fail":
            op.ret = time.monotonic()
        if op.error.startswith("UNEXPECTED"):
            self.unexpected.append(f"op {op.id} {op.kind} {op.key}: {op.error}")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            k = f"{op.kind}:{op.outcome}"
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def lincheck_ops(self) -> list[L.Operation]:
        """The register operations as lincheck input: ok ones with their response, unknown
        writes with ret=None, failed ones left out."""
        out: list[L.Operation] = []
        for op in self.ops:
            if not op.key.startswith(REG) or op.outcome == "fail":
                continue
            ret = op.ret if op.outcome == "ok" else None
            if op.kind == "get":
                if ret is None:
                    continue
                out.append(L.Operation(op.client, op.call, ret, L.Get(op.key), op.output))
            elif op.kind == "put":
                out.append(L.Operation(op.client, op.call, ret, L.Put(op.key, op.value)))
            elif op.kind == "delete":
                out.append(L.Operation(op.client, op.call, ret, L.Delete(op.key), op.output))
            elif op.kind == "cas":
                inp = L.Cas(op.key, op.expected, op.value)
                out.append(L.Operation(op.client, op.call, ret, inp, op.output))
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(op) for op in self.ops]


@dataclass
class WatchRecord:
    """One watch as its consumer saw it: `segments` are the server streams it lived on (one
    for a raw stream per re-create; one overall for the client's resumable `Watch`), each
    (start_revision, [(header revision, events)]). `end_error` is set if it ended for good."""

    name: str
    key: bytes
    range_end: bytes
    prev_kv: bool
    segments: list[tuple[int, list[tuple[int, list[Event]]]]] = field(default_factory=list)
    end_error: str = ""

    @property
    def last_revision(self) -> int:
        for _, batches in reversed(self.segments):
            for _, events in reversed(batches):
                if events:
                    return events[-1].kv.mod_revision
        return 0
