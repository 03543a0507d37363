#!/usr/bin/env bash
# Creates .venv and installs raftreg with an extra on first use: `scripts/bootstrap.sh [EXTRA]`,
# EXTRA "dev" (the default: server, tests, tools, etcd binaries) or "server" (what a node needs;
# scripts/start-cluster.sh). Later runs reinstall only when pyproject.toml changed or a wider
# extra is asked for ("dev" covers "server"). Called by the other scripts; prints the venv python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
EXTRA="${1:-dev}"
case "$EXTRA" in dev|server) ;; *) echo "bootstrap: unknown extra $EXTRA" >&2; exit 2 ;; esac
stamp="$VENV/.raftreg-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
want="$EXTRA $hash"
[ "$have" = "dev $hash" ] && want="$have"   # dev includes server
if [ ! -x "$PY" ]; then
  echo "bootstrap: creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$have" != "$want" ]; then
  echo "bootstrap: installing raftreg[$EXTRA] and its dependencies" >&2
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q -e "$ROOT[$EXTRA]" >&2
  echo "$want" > "$stamp"
fi
echo "$PY"
