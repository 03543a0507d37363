"""The linearizability checker's sequential models: Jepsen's cas-register (`RegisterModel`,
`RegisterInput`) and etcd-style keys checked one key at a time (`KVModel`: `Get`, `Put`,
`Delete`, `Cas`)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from raftreg.testing.lincheck.contract import UNKNOWN, ModelBase, Operation

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
