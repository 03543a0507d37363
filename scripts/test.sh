#!/usr/bin/env bash
# The whole suite: bootstrap (first use creates .venv), generated code up to date, ruff, mypy,
# pytest. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
PY="$(scripts/bootstrap.sh)"
BIN="$(dirname "$PY")"
echo "== ruff"
"$BIN/ruff" check .
echo "== mypy (strict: raftreg/ and services/)"
"$BIN/mypy"
echo "== pytest"
"$PY" -m pytest -q -p no:cacheprovider "$@"
