#!/usr/bin/env bash
# Stop exactly the node processes that start-cluster.sh started (pid files in the data dirs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(scripts/bootstrap.sh server)"
"$PY" scripts/cluster.py stop --config "${RAFTREG_CONFIG:-cluster.toml}"
