#!/usr/bin/env bash
# System packages the tests need beyond the Python ones (pyproject's dev extra): fuse3 for the
# power-cut file system (raftreg/testing/powercut.py: fusermount3 and libfuse3). Idempotent and
# quiet: does nothing when they are there. Installs with apt-get when run as root (CI is);
# otherwise it says what is missing and the power-cut tests skip (they fail under CI=true).
set -euo pipefail
have() { command -v fusermount3 >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so'; }
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  if ! { apt-get install -y -qq --no-install-recommends fuse3 >"$log" 2>&1 ||
         { apt-get update -qq >>"$log" 2>&1 &&
           apt-get install -y -qq --no-install-recommends fuse3 >>"$log" 2>&1; }; }; then
    echo "test-deps: installing fuse3 failed:" >&2
    tail -20 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  have && exit 0
fi
echo "test-deps: fuse3 (fusermount3, libfuse3) is missing: the power-cut tests will skip" >&2
[ -z "${CI:-}" ]
