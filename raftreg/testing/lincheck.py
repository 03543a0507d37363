"""A linearizability checker (Wing & Gong / Lowe / Porcupine style) with register and KV models.

Contract
========

A *history* is a list of :class:`Operation`: each has the client that issued it, the real time
of its invocation (``call``) and of its response (``ret``), its ``input`` and its ``output``.
``check(model, history)`` answers whether there is a *linearization*: a total order of the
operations that

* respects real time -- if ``a.ret < b.call`` then ``a`` comes before ``b``; operations whose
  intervals overlap (or merely touch: ``a.ret == b.call``) may go in either order;
* is legal for the sequential ``model``: starting from ``model.init()``, each operation's
  ``model.step(state, input, output)`` accepts it, and its returned state feeds the next one.

Indeterminate operations (Jepsen ``:info``, raftreg's "outcome unknown", a client that crashed
before the response) have ``ret=None``. Such an operation may have taken effect at any single
instant after its call, or never. The checker gives it a response time of +infinity and passes
the sentinel :data:`UNKNOWN` as its output, whatever ``Operation.output`` holds. A model must
accept any input with output ``UNKNOWN`` and apply its effect to the state; because nothing
follows +infinity, linearizing such an operation after every determinate one is exactly the same
as dropping it, so "may never have happened" needs no separate case (this is how Knossos and
Porcupine treat ``:info``). Operations that definitely did *not* happen (Jepsen ``:fail`` of a
write) must be left out of the history by the recorder; indeterminate reads should be left out
too (they have no effect and only cost search time).

Models must be deterministic: the new state is a function of (state, input, output). States must
be hashable and compare by value (they are memoised); inputs should be hashable (used for the
symmetry reduction of indeterminate operations; unhashable inputs merely disable it).

Algorithm
=========

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
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, final

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

S = TypeVar("S")


@final
class _Unknown:
    """Type of :data:`UNKNOWN`: the output of an operation whose response was never seen."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""Output passed to ``Model.step`` for operations with ``ret=None``: accept, apply the effect."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history.

    ``call`` and ``ret`` are real times on one clock (any comparable numbers: seconds, log line
    numbers). ``ret=None`` means no response was seen: the operation may have taken effect at any
    time after ``call``, or never, and its ``output`` is ignored. Otherwise ``call <= ret``.
    ``client`` is informational (it is not used by the check; real time already orders one
    client's sequential operations).
    """

    client: int
    call: float
    ret: float | None
    input: Any
    output: Any = None

    @property
    def indeterminate(self) -> bool:
        return self.ret is None


class Model(Protocol[S]):
    """A sequential specification. Subclass :class:`ModelBase` to get the optional methods."""

    def init(self) -> S:
        """The initial state."""
        ...

    def step(self, state: S, input: Any, output: Any) -> tuple[bool, S]:
        """Whether ``input`` may produce ``output`` in ``state``, and the state after it.

        ``output`` is :data:`UNKNOWN` for an indeterminate operation: then return ``True`` and
        the state after the operation's effect. Must be a pure function.
        """
        ...

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        """Split a history into independently checkable sub-histories (order is kept)."""
        ...

    def describe_operation(self, op: Operation) -> str:
        """A one-line human description of an operation (for failure reports)."""
        ...

    def describe_state(self, state: S) -> str:
        """A short human description of a state (for failure reports)."""
        ...


class ModelBase(Generic[S]):
    """Defaults for the optional parts of :class:`Model`: one partition, ``repr`` descriptions."""

    def init(self) -> S:
        raise NotImplementedError

    def step(self, state: S, input: Any, output: Any) -> tuple[bool, S]:
        raise NotImplementedError

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return [list(ops)]

    def describe_operation(self, op: Operation) -> str:
        out = "?" if op.ret is None else repr(op.output)
        ret = "?" if op.ret is None else f"{op.ret:g}"
        return f"client {op.client} [{op.call:g}, {ret}] {op.input!r} -> {out}"

    def describe_state(self, state: S) -> str:
        return repr(state)


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


# ---------------------------------------------------------------------------------------------
# Register model (Jepsen's cas-register: read / write / compare-and-set on one value)


@dataclass(frozen=True, slots=True)
class RegisterInput:
    """``RegisterInput("read")``, ``RegisterInput("write", v)``, ``RegisterInput("cas", e, n)``.

    Outputs: read -> the value read (``None`` = nil); write -> ignored; cas -> ``True`` if it
    swapped, ``False`` if the compare failed (a definite, observed failure).
    """

    kind: Literal["read", "write", "cas"]
    value: Any = None  # write: the value; cas: the expected value
    new: Any = None  # cas: the new value

    def __repr__(self) -> str:
        if self.kind == "read":
            return "read"
        if self.kind == "write":
            return f"write {self.value!r}"
        return f"cas {self.value!r}->{self.new!r}"


class RegisterModel(ModelBase[Any]):
    """A single register holding any hashable value; ``initial`` (default ``None``) at start.

    * read: ok iff output == state (any output if UNKNOWN); state unchanged;
    * write v: always ok; state := v;
    * cas (e, n): if state == e then state := n and the output must be True (or UNKNOWN),
      else state unchanged and the output must be False (or UNKNOWN).
    """

    def __init__(self, initial: Any = None) -> None:
        self.initial = initial

    def init(self) -> Any:
        return self.initial

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        inp: RegisterInput = input
        kind = inp.kind
        if kind == "read":
            return (output is UNKNOWN or output == state), state
        if kind == "write":
            return True, inp.value
        if kind == "cas":
            if state == inp.value:
                return (output is UNKNOWN or output is True), inp.new
            return (output is UNKNOWN or output is False), state
        raise ValueError(f"not a register operation: {input!r}")

    def describe_state(self, state: Any) -> str:
        return "nil" if state is None else repr(state)


# ---------------------------------------------------------------------------------------------
# KV model for raftreg's own histories: per-key partitioning


@dataclass(frozen=True, slots=True)
class Get:
    """Read one key. Output: its value, or ``None`` if the key does not exist."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Put:
    """Write one key (creating it if absent). Output: ignored."""

    key: Hashable
    value: Any


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one key. Output: the number of keys deleted (0 or 1), or ``None`` to not check."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Cas:
    """A Txn ``if <compare> then put(key, new)`` (no else branch). Output: ``succeeded`` bool.

    ``on="value"``: compare the value with ``expected``; ``expected=None`` means "the key does
    not exist" (record an etcd ``version == 0`` / ``create_revision == 0`` compare this way: a
    value compare on a missing key is always false in etcd, so never record it with ``None``).
    ``on="version"``: compare the key's version (0 = absent) with ``expected``.
    A ``mod_revision`` / ``create_revision`` compare depends on the store-wide revision, which
    no per-key model can know; record such compares as a version compare when the recorder can
    map them, or check those histories with a whole-store model.
    """

    key: Hashable
    expected: Any
    new: Any
    on: Literal["value", "version"] = "value"


KVInput = Get | Put | Delete | Cas
KVState = tuple[Any, int]
"""State of one key: (value or None when absent, version). Version is etcd's: 0 while the key
does not exist, 1 after the put that creates it, +1 per put, back to 0 on delete."""

_ABSENT: KVState = (None, 0)


class KVModel(ModelBase[KVState]):
    """etcd-style keys, checked one key at a time (``partition`` groups by ``input.key``).

    * Get: ok iff output == value (``None`` for an absent key); state unchanged.
    * Put v: always ok; state := (v, version + 1).
    * Delete: ok iff the output (if not ``None``) is 1 for a present key, 0 for an absent one;
      state := absent (version 0).
    * Cas: the compare holds -> output must be True and state := (new, version + 1);
      otherwise output must be False and state unchanged.
    With output UNKNOWN every operation is accepted and its effect applied.
    """

    def init(self) -> KVState:
        return _ABSENT

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        parts: dict[Hashable, list[Operation]] = {}
        for op in ops:
            parts.setdefault(op.input.key, []).append(op)
        return list(parts.values())

    def step(self, state: KVState, input: Any, output: Any) -> tuple[bool, KVState]:
        value, version = state
        unknown = output is UNKNOWN
        match input:
            case Get():
                return (unknown or output == value), state
            case Put(value=v):
                return True, (v, version + 1)
            case Delete():
                ok = unknown or output is None or output == (1 if version else 0)
                return ok, _ABSENT
            case Cas(expected=e, new=v, on=on):
                if on == "value":
                    holds = version == 0 if e is None else (version > 0 and value == e)
                else:
                    holds = version == e
                if holds:
                    return (unknown or output is True), (v, version + 1)
                return (unknown or output is False), state
        raise ValueError(f"not a KV operation: {input!r}")

    def describe_state(self, state: KVState) -> str:
        value, version = state
        return "<absent>" if version == 0 else f"{value!r} (version {version})"
