#!/usr/bin/env bash
# The one place generated protobuf code comes from. Never edit the output by hand.
#   protos/raftreg.proto -> raftreg/pb/raftreg_pb2{,_grpc}.py{,i}
#   protos/etcdv3.proto  -> raftreg/client/etcd/pb/etcdv3_pb2.py{,i} (messages only: the etcd adapter
#                           sets etcd's gRPC method paths itself)
#   protos/{user,chat}.proto -> services/pb/*_pb2{,_grpc}.py{,i} (when present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
gen() {  # gen <import-package-dir> <proto files...>
  local pkg=$1; shift
  mkdir -p "$pkg"
  [ -f "$pkg/__init__.py" ] || echo '"""Generated protobuf and gRPC code (scripts/gen-protos.sh); do not edit."""' > "$pkg/__init__.py"
  "$PY" -m grpc_tools.protoc -I"$pkg=protos" \
    --python_out=. --grpc_python_out=. \
    --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" --mypy_out=. \
    --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" --mypy_grpc_out=. \
    "$@"
}
gen raftreg/pb protos/raftreg.proto
gen raftreg/client/etcd/pb protos/etcdv3.proto
svc=()
for p in user chat; do [ -f "protos/$p.proto" ] && svc+=("protos/$p.proto"); done
if [ ${#svc[@]} -gt 0 ]; then gen services/pb "${svc[@]}"; fi
