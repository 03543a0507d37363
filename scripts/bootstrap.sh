#!/usr/bin/env bash
# Creates .venv and installs raftreg with its dev tools on first use; later runs only
# reinstall when pyproject.toml changed. Sourced by the other scripts; prints the venv python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
stamp="$VENV/.raftreg-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$PY" ]; then
  echo "bootstrap: creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing raftreg and its dependencies" >&2
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q -e "$ROOT[dev]" >&2
  echo "$want" > "$stamp"
fi
echo "$PY"
