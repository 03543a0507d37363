"""Read Jepsen cas-register logs (``jepsen.util`` lines) into :mod:`raftreg.testing.lincheck` ops.

A log line looks like ``INFO  jepsen.util - 3<TAB>:invoke<TAB>:cas<TAB>[3 0]``: a process id,
an event type (``:invoke``, ``:ok``, ``:fail``, ``:info``), a function (``:read``, ``:write``,
``:cas``) and a value (an integer, ``nil``, ``[expected new]``, or a keyword such as
``:timed-out``). Other lines are ignored. Time is the line number of the event.

Pairing and meaning (Jepsen's contract, one outstanding operation per process):

* ``:invoke`` opens an operation for its process; the next completion of that process closes it.
* ``:ok`` -- it happened: a read's output is the completion's value (``nil`` -> ``None``), a
  write's output is ignored, a cas's output is ``True``.
* ``:fail`` -- it definitely did not take effect: dropped. Exception: by default a failed
  ``:cas`` is kept as a cas whose compare failed (output ``False``), because that is what
  Jepsen's etcd client reports with ``:fail`` (etcd answered "compare failed"); pass
  ``failed_cas="drop"`` to treat it like any other ``:fail``.
* ``:info`` -- indeterminate: the operation gets ``ret=None`` (may have taken effect at any time
  after its call, or never). Indeterminate reads are dropped (they cannot have had an effect).
* An invocation never completed (the process crashed; Jepsen continues with a fresh process
  id) is indeterminate too, as is one superseded by a new ``:invoke`` of the same process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from raftreg.testing.lincheck import Operation, RegisterInput

__all__ = ["parse_jepsen_lines", "parse_jepsen_log", "read_expected"]

_LINE = re.compile(
    r"jepsen\.util\s+-\s+(?P<proc>\d+)\s+:(?P<type>invoke|ok|fail|info)\s+:(?P<f>read|write|cas)"
    r"(?:\s+(?P<value>.*?))?\s*$"
)
_INT = re.compile(r"-?\d+")


def _value(text: str) -> int | None:
    if text == "nil":
        return None
    if _INT.fullmatch(text):
        return int(text)
    raise ValueError(f"unexpected Jepsen value {text!r}")


def _input(f: str, value: str) -> RegisterInput:
    if f == "read":
        return RegisterInput("read")
    if f == "write":
        return RegisterInput("write", _value(value))
    parts = value.strip("[]").split()
    if len(parts) != 2:
        raise ValueError(f"unexpected cas argument {value!r}")
    return RegisterInput("cas", _value(parts[0]), _value(parts[1]))


def parse_jepsen_lines(
    lines: Iterable[str], failed_cas: Literal["observe", "drop"] = "observe"
) -> list[Operation]:
    """Operations of a Jepsen cas-register log, in invocation order (see the module docstring)."""
    ops: list[tuple[int, Operation]] = []
    # process -> (invocation line, input)
    pending: dict[int, tuple[int, RegisterInput]] = {}

    def indeterminate(proc: int) -> None:
        call, inp = pending.pop(proc)
        if inp.kind != "read":
            ops.append((call, Operation(proc, call, None, inp)))

    for lineno, line in enumerate(lines):
        m = _LINE.search(line)
        if m is None:
            continue
        proc, kind, f = int(m["proc"]), m["type"], m["f"]
        value = m["value"] or "nil"
        if kind == "invoke":
            if proc in pending:  # a process never invokes twice; be safe anyway
                indeterminate(proc)
            pending[proc] = (lineno, _input(f, value))
            continue
        if proc not in pending:
            raise ValueError(f"line {lineno + 1}: completion without invocation: {line!r}")
        call, inp = pending[proc]
        if inp.kind != f:
            raise ValueError(f"line {lineno + 1}: completes :{inp.kind} with :{f}: {line!r}")
        if kind == "info":
            indeterminate(proc)
            continue
        del pending[proc]
        if kind == "ok":
            output = _value(value) if f == "read" else (True if f == "cas" else None)
            ops.append((call, Operation(proc, call, lineno, inp, output)))
        elif f == "cas" and failed_cas == "observe":
            ops.append((call, Operation(proc, call, lineno, inp, False)))
        # any other :fail did not happen: dropped
    for proc in list(pending):
        indeterminate(proc)
    ops.sort(key=lambda t: t[0])
    return [op for _, op in ops]


def parse_jepsen_log(
    path: str | Path, failed_cas: Literal["observe", "drop"] = "observe"
) -> list[Operation]:
    """:func:`parse_jepsen_lines` of a file."""
    with open(path, encoding="utf-8") as fh:
        return parse_jepsen_lines(fh, failed_cas)


def read_expected(path: str | Path) -> dict[int, bool]:
    """Parse an ``expected.txt`` of lines ``<history number> true|false`` (blank lines and
    ``#`` comments allowed)."""
    verdicts: dict[int, bool] = {}
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("true", "false") or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<n> true|false', got {raw!r}")
        verdicts[int(parts[0])] = parts[1] == "true"
    return verdicts
