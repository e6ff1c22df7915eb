"""A newcomer's first run: README's `flux-proxy serve`, no key, no config, then the page.

The proxy runs as a real subprocess in a clean environment (no FAL_KEY*, no FLUX_PROXY_*),
from an empty directory, so it must pick demo mode on its own and keep its data there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import REPO_ROOT

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    """The installed `flux-proxy` script next to this Python, else the same entry point."""
    script = Path(sys.executable).with_name("flux-proxy")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("flux-proxy")
    return [found, "serve"] if found else [sys.executable, "-m", "proxy.cli", "serve"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAL_KEY", "FLUX_PROXY_"))}
    # The code under test, even when another checkout is the one installed in editable mode.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    workdir = tmp_path / "newcomer"
    workdir.mkdir()
    with log.open("wb") as out:
        proc = subprocess.Popen([*serve_command(), "--port", str(port)], cwd=workdir,
                                env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"flux-proxy serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"flux-proxy serve did not answer in 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, workdir
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert "DEMO MODE" in log.read_text()


def test_serve_with_no_key_and_no_config_runs_the_demo(
    first_run: tuple[str, Path], new_page: Callable[..., Page],
    screenshot: Callable[[Page, str], Path],
) -> None:
    url, workdir = first_run
    page = new_page()
    page.goto(f"{url}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#mode-badge")).to_have_attribute("data-mode", "demo")
    page.fill("#prompt", "my first picture")
    page.select_option("#image-size", "square")
    page.click("#generate")  # the form's defaults otherwise: 28 steps, one JPEG
    image = page.locator("img.result-image").first
    expect(image).to_be_visible(timeout=20_000)
    page.wait_for_function(
        "() => { const i = document.querySelector('img.result-image');"
        " return i && i.complete && i.naturalWidth === 512 && i.naturalHeight === 512; }"
    )
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    screenshot(page, "demo-first-run")
    assert (workdir / "flux-proxy-data").is_dir()  # jobs stay where the newcomer ran it
