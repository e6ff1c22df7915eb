#!/usr/bin/env bash
# Install what the browser tests (tests/browser, marker `browser`) need, without downloading any
# browser build: Debian's `chromium` package (apt) and Playwright for Python, which drives it via
# executable_path. Never run `playwright install`. Idempotent: installs only what is missing, then
# launches headless Chromium once to prove the pair works.
#
#   bash scripts/install-browser.sh            # PYTHON=... to pick the interpreter (default python3)
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2
PYTHON="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "install-browser: installing Debian chromium (apt)"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi

installed="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null || true)"
if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
  echo "install-browser: installing playwright==$PLAYWRIGHT_VERSION (Python package only, no browsers)"
  "$PYTHON" -m pip install -q "playwright==$PLAYWRIGHT_VERSION"
fi

"$PYTHON" - <<'PY'
import shutil

from playwright.sync_api import sync_playwright

path = shutil.which("chromium")
with sync_playwright() as pw:
    browser = pw.chromium.launch(
        executable_path=path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
    )
    page = browser.new_page()
    page.set_content("<p id=ok>ok</p>")
    assert page.inner_text("#ok") == "ok"
    print(f"install-browser: ok, Chromium {browser.version} at {path} via Playwright")
    browser.close()
PY
