#!/usr/bin/env bash
# Runs every check flux-proxy has: lint, types and the whole test suite, after installing what
# they need (idempotent, so it is also the newcomer's one test command on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== installing Python packages (CPU torch first, so the gpu extra does not pull CUDA)"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e '.[test,gpu]'

echo "== installing the pinned @fal-ai/client for the JS tests"
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

need_apt=()
for pkg in $(cat scripts/apt-packages.txt 2>/dev/null); do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

echo "== browser for the page tests (Debian chromium + Playwright, no browser downloads)"
bash scripts/install-browser.sh
export FLUX_PROXY_REQUIRE_BROWSER=1   # browser tests must run, never silently skip

echo "== ruff"
"$PY" -m ruff check proxy tests scripts
echo "== mypy"
"$PY" -m mypy
echo "== pytest"
"$PY" -m pytest -q "$@"
