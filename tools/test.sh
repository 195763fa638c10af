#!/usr/bin/env bash
# The test suite, from a fresh clone: sets up the venv (tools/setup.sh), the browser-test tools
# (Debian's chromium, playwright-core from npm; root only), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/setup.sh
if [ -f tests/ui/package.json ]; then
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium (apt) for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  if [ ! -d tests/ui/node_modules ] && command -v npm >/dev/null; then
    echo "[test] installing the browser-test driver (npm)"
    (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
export SURG3D_ARTIFACTS=${SURG3D_ARTIFACTS:-$root/artifacts}
exec .venv/bin/python -m pytest "$@"
