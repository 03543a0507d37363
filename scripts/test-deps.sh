#!/usr/bin/env bash
# System packages the tests need beyond the Python ones (pyproject's dev extra):
# - fuse3 for the power-cut file system (raftreg/testing/powercut/: fusermount3, libfuse3);
# - chromium and chromium-driver for the dashboard test (tests/dashboard, driven by selenium).
# Idempotent and quiet: does nothing when they are there. Installs with apt-get when run as root
# (CI is); otherwise it says what is missing and those tests skip (they fail under CI=true).
set -euo pipefail
missing() {
  { command -v fusermount3 >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so'; } ||
    echo fuse3
  command -v chromium >/dev/null 2>&1 || echo chromium
  command -v chromedriver >/dev/null 2>&1 || echo chromium-driver
}
need="$(missing | tr '\n' ' ')"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  # shellcheck disable=SC2086  # one word per package
  if ! { apt-get install -y -qq --no-install-recommends $need >"$log" 2>&1 ||
         { apt-get update -qq >>"$log" 2>&1 &&
           apt-get install -y -qq --no-install-recommends $need >>"$log" 2>&1; }; }; then
    echo "test-deps: installing $need failed:" >&2
    tail -20 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  need="$(missing | tr '\n' ' ')"
  [ -z "$need" ] && exit 0
fi
echo "test-deps: missing system packages: $need(the power-cut or dashboard tests will skip)" >&2
[ -z "${CI:-}" ]
