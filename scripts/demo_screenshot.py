"""Retake README's screenshot (docs/demo.png): the demo page in demo mode with a result.

    python3 scripts/demo_screenshot.py [docs/demo.png]

Runs the standalone app as `flux-proxy serve` would with no key and no config (data in a
temporary directory), drives Debian's chromium through Playwright at 1280x800 and saves the
viewport. Needs what the browser tests need (scripts/apt-packages.txt, the `test` extra).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.app import create_app  # noqa: E402
from proxy.settings import settings_from_dict  # noqa: E402

PROMPT = "A lighthouse on a cliff at dusk, volumetric light, 35mm photo"


def serve(data_dir: str) -> tuple[uvicorn.Server, str]:
    """The demo-mode app on a free loopback port, in a background thread."""
    app = create_app(settings_from_dict({"local": {"data_dir": data_dir}}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                     daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the demo app did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main(out: Path) -> None:
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH (scripts/apt-packages.txt)")
    with tempfile.TemporaryDirectory() as data_dir:
        server, url = serve(data_dir)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 800},
                                        color_scheme="light")
                page.goto(f"{url}/")
                expect(page.locator("body")).to_have_attribute("data-ready", "true")
                page.fill("#prompt", PROMPT)
                page.select_option("#image-size", "landscape_4_3")
                page.fill("#seed", "2024")
                page.fill("#num-images", "2")
                page.click("#generate")
                expect(page.locator("#status")).to_have_attribute("data-state", "done",
                                                                  timeout=20_000)
                page.wait_for_function(
                    "[...document.querySelectorAll('img.result-image')]"
                    ".every(i => i.complete && i.naturalWidth > 0)")
                page.evaluate("document.getElementById('logs-panel').open = false")  # room
                page.wait_for_timeout(500)  # the progress bar's transition
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.should_exit = True
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png")
