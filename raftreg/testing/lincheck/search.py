"""The linearizability search: `check(model, history)` and its verdicts (`CheckResult`, one
`PartitionResult` per partition), against the contract in `contract`.

Lowe's just-in-time linearization as in Porcupine: the calls and returns of a partition are put
in one doubly linked list in time order. The search walks the list from its head; at a call it
tries to linearize that operation now (``step`` accepts and the configuration is new), removes
("lifts") its call and return from the list and restarts from the head; at a return it has met
an operation that must already have been linearized, so it backtracks (unlifts the last
linearized operation and tries the next candidate after it). It succeeds when the list is empty
and fails when it must backtrack with nothing linearized. Configurations
``(set of linearized operations as an int bitset, model state)`` that were already explored are
not explored again: the rest of the search depends only on that pair.

P-compositionality: linearizability is local, so a history is linearizable iff each of its
per-object sub-histories is; ``model.partition`` splits the history (the KV model: per key) and
each part is checked on its own, which keeps the bitsets small and the search space a sum
instead of a product.

Symmetry reduction: two *pending* indeterminate operations with equal inputs are
interchangeable (same effect, both may linearize at any time after their calls, both have
response +infinity), so the search only ever linearizes the earlier-called one first. This turns
k pending indeterminate writes of the same value from 2**k subsets into k + 1 (on the Jepsen etcd
histories, full of timed-out writes and cas, it halves the configurations explored).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raftreg.testing.lincheck.contract import UNKNOWN, Model, Operation

S = TypeVar("S")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PartitionResult:
    """The verdict for one partition.

    ``ok`` is ``None`` when the search ran out of time. When ``ok`` is False, ``longest`` is the
    longest partial linearization the search found (operations in linearization order, with the
    state after each), and ``stuck`` are the operations that had returned at that point without
    being linearizable -- the first of them is the one nothing could be ordered before.
    """

    ok: bool | None
    operations: tuple[Operation, ...]
    longest: tuple[tuple[Operation, Any], ...] = ()
    stuck: tuple[Operation, ...] = ()
    explored: int = 0


@dataclass(frozen=True)
class CheckResult:
    """The verdict for a whole history: ``ok`` is True, False, or None (timed out / unknown).

    ``ok`` is False as soon as one partition is not linearizable, None if none failed but some
    timed out, True if all are linearizable. ``explain()`` renders the failing partition.
    """

    ok: bool | None
    partitions: tuple[PartitionResult, ...]
    elapsed: float
    model: Model[Any] = field(repr=False, compare=False)

    @property
    def failed(self) -> PartitionResult | None:
        return next((p for p in self.partitions if p.ok is False), None)

    def explain(self, limit: int = 40) -> str:
        """Human-readable account of the verdict, for test failure messages."""
        m = self.model
        if self.ok is True:
            return f"linearizable ({len(self.partitions)} partitions, {self.elapsed:.3f}s)"
        if self.ok is None:
            n = sum(p.ok is None for p in self.partitions)
            return f"unknown: {n} of {len(self.partitions)} partitions timed out"
        p = self.failed
        assert p is not None
        lines = [
            f"NOT linearizable: a partition of {len(p.operations)} operations "
            f"(of {len(self.partitions)} partitions); longest linearizable prefix has "
            f"{len(p.longest)} operations:"
        ]
        shown = p.longest[-limit:]
        if len(shown) < len(p.longest):
            lines.append(f"  ... {len(p.longest) - len(shown)} earlier operations")
        for op, st in shown:
            lines.append(f"  {m.describe_operation(op)}   => {m.describe_state(st)}")
        lines.append("after which none of these returned operations can be linearized:")
        for op in p.stuck[:limit]:
            lines.append(f"  {m.describe_operation(op)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The search


class _Timeout(Exception):
    pass


def check(model: Model[S], ops: Iterable[Operation], timeout: float | None = None) -> CheckResult:
    """Check ``ops`` for linearizability against ``model``, partition by partition.

    ``timeout`` (seconds, for the whole call) bounds the search: partitions not decided in time
    get ``ok=None``. Partitions after a failing one are not checked (they are reported with
    ``ok=None``). Raises ``ValueError`` for an operation with ``ret < call``.
    """
    history = list(ops)
    for op in history:
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before it is called: {op}")
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    results: list[PartitionResult] = []
    failed = False
    for part in model.partition(history):
        if failed:
            results.append(PartitionResult(None, tuple(part)))
            continue
        try:
            r = _check_partition(model, part, deadline)
        except _Timeout:
            r = PartitionResult(None, tuple(part))
        results.append(r)
        failed = r.ok is False
    if failed:
        verdict: bool | None = False
    elif any(r.ok is None for r in results):
        verdict = None
    else:
        verdict = True
    return CheckResult(verdict, tuple(results), time.monotonic() - start, model)


def _check_partition(
    model: Model[S], ops: list[Operation], deadline: float | None
) -> PartitionResult:
    n = len(ops)
    if n == 0:
        return PartitionResult(True, ())
    inputs = [op.input for op in ops]
    outputs = [UNKNOWN if op.ret is None else op.output for op in ops]

    # Events in time order; at equal times calls come first, so touching intervals count as
    # concurrent (the permissive reading). Node 2i is the call of op i, node 2i+1 its return;
    # node 2n is the head sentinel. -1 is "no node".
    events = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, 2 * i))
        events.append((math.inf if op.ret is None else op.ret, 1, 2 * i + 1))
    events.sort()
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for _, _, node in events:
        nxt[last] = node
        prv[node] = last
        last = node

    # Symmetry reduction: for each indeterminate op, the earlier-called indeterminate ops with
    # an equal input. Op i is only linearized when all of those are already linearized.
    order = {node: k for k, (_, _, node) in enumerate(events)}
    blockers = [0] * n  # bitset of the ops that must be linearized before op i may be
    groups: dict[Any, list[int]] = {}
    for i in sorted(range(n), key=lambda i: order[2 * i]):
        if ops[i].ret is not None:
            continue
        try:
            key = (inputs[i],)
            hash(key)
        except TypeError:
            continue
        earlier = groups.setdefault(key, [])
        if earlier:
            blockers[i] = 1 << earlier[-1]  # the chain makes the immediate predecessor enough
        earlier.append(i)

    step = model.step
    state: Any = model.init()
    linearized = 0  # bitset over ops of this partition
    # Invariant: the linked list holds exactly the calls and returns of the ops not in
    # `linearized`, in time order; `stack` holds (call node, state before it) for each op in
    # `linearized`, in linearization order, and `state` is the state after all of them.
    stack: list[tuple[int, Any]] = []
    seen: set[tuple[int, Any]] = set()
    best_depth = -1
    best: tuple[list[tuple[int, Any]], Any, int] | None = None
    counter = 0
    entry = nxt[head]
    while nxt[head] != -1:
        counter += 1
        if deadline is not None and counter & 0x3FF == 0 and time.monotonic() > deadline:
            raise _Timeout
        if not entry & 1:  # a call: try to linearize op i here
            i = entry >> 1
            bit = 1 << i
            b = blockers[i]
            if b and not linearized & b:
                entry = nxt[entry]
                continue
            ok, new_state = step(state, inputs[i], outputs[i])
            if ok:
                new_lin = linearized | bit
                conf = (new_lin, new_state)
                if conf not in seen:
                    seen.add(conf)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    # lift: unlink the call and its return (the call always has a successor)
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    prv[q] = p
                    r = entry + 1
                    p, q = prv[r], nxt[r]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:  # a return of an op not yet linearized: backtrack
            if len(stack) > best_depth:
                best_depth = len(stack)
                best = (list(stack), state, entry)
            if not stack:
                break
            entry, state = stack.pop()
            linearized ^= 1 << (entry >> 1)
            # unlift: relink the return, then the call (reverse order of lift)
            r = entry + 1
            nxt[prv[r]] = r
            if nxt[r] != -1:
                prv[nxt[r]] = r
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]
    else:
        return PartitionResult(True, tuple(ops), explored=len(seen))

    assert best is not None
    bstack, bstate, bret = best
    lin_ops = [ops[node >> 1] for node, _ in bstack]
    # the state after op k is the state saved before op k + 1 (or the final state)
    after = [st for _, st in bstack[1:]] + [bstate] if bstack else []
    done = {node >> 1 for node, _ in bstack}
    stuck_ret = ops[bret >> 1].ret
    stuck = [
        op
        for i, op in enumerate(ops)
        if i not in done and op.ret is not None and stuck_ret is not None and op.ret <= stuck_ret
    ]
    stuck.sort(key=lambda op: (op.ret, op.call))
    return PartitionResult(
        False,
        tuple(ops),
        longest=tuple(zip(lin_ops, after, strict=True)),
        stuck=tuple(stuck),
        explored=len(seen),
    )
