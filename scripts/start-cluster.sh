#!/usr/bin/env bash
# Start the three-node local cluster from cluster.toml (creating .venv on first use), wait for a
# leader and print the members and their status. Running it twice is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(scripts/bootstrap.sh server)"
CONFIG="${RAFTREG_CONFIG:-cluster.toml}"
"$PY" scripts/cluster.py start --config "$CONFIG"
ENDPOINTS="$("$PY" -c 'import sys; from raftreg.config import load_config; print(",".join(load_config(sys.argv[1]).client_endpoints))' "$CONFIG")"
"$PY" -m raftreg.cli --endpoints "$ENDPOINTS" -w table member list
"$PY" -m raftreg.cli --endpoints "$ENDPOINTS" -w table endpoint status
