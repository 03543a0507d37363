#!/usr/bin/env bash
# Fault soak: many random fault schedules against fresh three-process clusters for as long as
# asked; prints counts and saves every failing schedule (with its seed) for replay.
#   scripts/fault-soak.sh --duration 30m [--seed N] [--out fault-soak]
#   scripts/fault-soak.sh --replay fault-soak/failures/seed-N.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(scripts/bootstrap.sh)"
exec "$PY" scripts/fault_soak.py "$@"
