"""Browser-test fixtures: headless Debian Chromium driven by Playwright for Python.

No browser is ever downloaded: Playwright launches the system ``chromium`` (apt) through
``executable_path``. Install both with ``scripts/install-browser.sh``.

Fixtures
--------
``browser``          session-wide headless Chromium (Playwright sync API).
``new_page``         factory: ``new_page(width=1280, height=800, **context_kwargs) -> Page``;
                     each page gets its own context, closed after the test.
``browser_page``     a 1280x800 page.
``console_errors``   ``console_errors(page) -> list[str]``: console errors and uncaught
                     exceptions seen by a page opened with ``new_page``.
``screenshot``       ``screenshot(page, name) -> Path``: full-page PNG under ``<repo>/artifacts/``.
``live_server``      factory: ``live_server(asgi_app) -> base URL`` (real uvicorn on 127.0.0.1,
                     ephemeral port, background thread, stopped after the test module).

Every test marked ``browser`` is skipped with the reason when chromium or playwright is
missing, unless ``FLUX_PROXY_REQUIRE_BROWSER=1`` (set it in CI), which turns that into an error.
When a browser test fails, a screenshot of each of its pages lands in ``artifacts/failures/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",  # containers/CI run as root; Chromium's sandbox refuses that
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-gpu",
]


def _missing_browser_tooling() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (run scripts/install-browser.sh)"
    if _chromium_path() is None:
        return "chromium is not on PATH (run scripts/install-browser.sh: apt-get install chromium)"
    return None


def _chromium_path() -> str | None:
    return (
        os.environ.get("CHROMIUM_PATH")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium via Playwright (scripts/install-browser.sh)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _missing_browser_tooling()
    if missing is None:
        return
    if os.environ.get("FLUX_PROXY_REQUIRE_BROWSER") == "1":
        raise pytest.UsageError(f"FLUX_PROXY_REQUIRE_BROWSER=1 but {missing}")
    skip = pytest.mark.skip(reason=missing)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED_KEY] = report.failed
    return report


_FAILED_KEY = pytest.StashKey[bool]()


# Package scope: Playwright's sync API keeps an event loop running on the main thread while
# it is open, which would break every asyncio test that runs after the browser tests.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=_chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


_ERRORS: weakref.WeakKeyDictionary[Page, list[str]] = weakref.WeakKeyDictionary()


@pytest.fixture
def new_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    pages: list[Page] = []

    def open_page(width: int = 1280, height: int = 800, **context_kwargs: Any) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height}, **context_kwargs)
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        _ERRORS[page] = errors
        pages.append(page)
        return page

    yield open_page

    failed = request.node.stash.get(_FAILED_KEY, False)
    for index, page in enumerate(pages):
        if failed and not page.is_closed():
            name = f"failures/{_slug(request.node.nodeid)}-{index}"
            try:
                save_screenshot(page, name)
            except Exception as exc:  # a failure screenshot must not mask the real failure
                print(f"could not save failure screenshot {name}: {exc}")
        page.context.close()


@pytest.fixture
def browser_page(new_page: Callable[..., Page]) -> Page:
    return new_page()


@pytest.fixture
def console_errors() -> Callable[[Page], list[str]]:
    return lambda page: list(_ERRORS.get(page, []))


def save_screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


@pytest.fixture
def screenshot() -> Callable[[Page, str], Path]:
    return save_screenshot


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-120:]


# ---------------------------------------------------------------------------- live server
# A minimal uvicorn-in-a-thread runner. The fake-upstream work brings a fuller one
# (tests/fakes/server.py: run_server / ServerHandle); switch to it once both have landed.


class _ThreadedServer:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", loop="asyncio", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def start(self) -> _ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[Callable[[Any], str]]:
    servers: list[_ThreadedServer] = []

    def serve(app: Any) -> str:
        servers.append(_ThreadedServer(app).start())
        return servers[-1].url

    yield serve
    for server in servers:
        server.stop()
