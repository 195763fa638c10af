#!/usr/bin/env bash
# The test suite, from a fresh clone: sets up the venv (tools/setup.sh), Debian's chromium and iptables (root
# only) and the browser-test driver (playwright-core from npm), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/setup.sh
# Debian packages of the tests (root only): chromium for the browser tests, iptables for the packet loss of the
# split-graph test
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v iptables >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[test] installing ${missing[*]} (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -f tests/ui/package.json ]; then
  if [ ! -d tests/ui/node_modules ] && command -v npm >/dev/null; then
    echo "[test] installing the browser-test driver (npm)"
    (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
export SURG3D_ARTIFACTS=${SURG3D_ARTIFACTS:-$root/artifacts}
exec .venv/bin/python -m pytest "$@"
