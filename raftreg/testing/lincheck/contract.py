"""The linearizability checker's contract: histories of `Operation`s, sequential `Model`s.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, final

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
