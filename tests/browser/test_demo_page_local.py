"""The demo page in headless Chromium against the real proxy in demo mode.

Local queue, SQLite store and the demo worker: what `flux-proxy serve` runs with no key and no
config. Generate (preset and custom sizes, live progress and logs), cancel a running job, a
rate limit's message, and a phone-sized screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from proxy.settings import Settings, settings_from_dict
from tests.local_support import Queue
from tests.support import PERMISSIVE, _merge, running_proxy

pytestmark = pytest.mark.browser

PHONE = (375, 740)

# Records every status text and progress value the page shows, so a test can tell the run
# was followed live (the demo worker logs "step i/n" per step) after it has finished.
RECORD_PROGRESS = """() => {
  const seen = window.__seen = {status: [], progress: []};
  const status = document.getElementById('status');
  const progress = document.getElementById('progress');
  new MutationObserver(() => {
    seen.status.push(status.textContent);
    seen.progress.push(progress.hasAttribute('value') ? progress.value : null);
  }).observe(document.body, {subtree: true, childList: true, characterData: true,
                             attributes: true, attributeFilter: ['value']});
}"""


def demo_settings(data_dir: Path, step_seconds: float, **sections: Any) -> Settings:
    """Demo mode (local queue, one demo worker) with tests' permissive identity and policy."""
    local = {"mode": "local", "data_dir": str(data_dir), "poll_interval": 0.05,
             "workers": [{"kind": "demo", "step_seconds": step_seconds}]}
    return settings_from_dict(_merge(_merge(PERMISSIVE, {"local": local}), sections))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # 0.1 s a step: 12 steps finish quickly, 50 are still running when cancel is clicked.
    settings = demo_settings(tmp_path_factory.mktemp("demo-data"), 0.1)
    with running_proxy(settings) as server:
        yield server.url


def open_demo(new_page: Callable[..., Page], site: str, size: tuple[int, int] = (1280, 800)
              ) -> Page:
    page = new_page(*size)
    page.goto(f"{site}/")  # redirects to /demo/ (on by default in demo mode)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#mode-badge")).to_have_attribute("data-mode", "demo")
    return page


def fill(page: Page, prompt: str, size: str | tuple[int, int], steps: int, seed: int) -> None:
    page.fill("#prompt", prompt)
    if isinstance(size, tuple):
        page.select_option("#image-size", "custom")
        page.fill("#width", str(size[0]))
        page.fill("#height", str(size[1]))
    else:
        page.select_option("#image-size", size)
    page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))


def wait_for_image(page: Page, width: int, height: int) -> None:
    """The newest result's first image has loaded with exactly this many pixels."""
    image = page.locator(".result-group").first.locator("img.result-image").first
    expect(image).to_be_visible(timeout=15_000)
    page.wait_for_function(
        "([w, h]) => { const i = document.querySelector('.result-group img.result-image');"
        " return i && i.complete && i.naturalWidth === w && i.naturalHeight === h; }",
        arg=[width, height],
    )


def test_generate_shows_progress_logs_and_images_of_the_chosen_size(
    site: str, new_page: Callable[..., Page], screenshot: Callable[[Page, str], Path],
    console_errors: Callable[[Page], list[str]],
) -> None:
    page = open_demo(new_page, site)
    page.evaluate(RECORD_PROGRESS)
    fill(page, "a lighthouse on a cliff at dusk", "square", steps=12, seed=42)
    page.click("#generate")
    wait_for_image(page, 512, 512)
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    seen = page.evaluate("window.__seen")
    assert any("step" in text and "/12" in text for text in seen["status"]), seen["status"]
    assert any(v is not None and 0 < v < 100 for v in seen["progress"]), seen["progress"]
    assert page.locator("#progress").get_attribute("value") == "100"
    logs = page.locator("#logs")
    expect(logs).to_contain_text("step 12/12")
    expect(logs).to_contain_text("demo")
    assert int(page.locator("#logs-count").inner_text()) >= 12
    caption = page.locator(".result-group").first.locator("figcaption")
    expect(caption).to_contain_text("seed 42")
    expect(caption).to_contain_text("512\u00d7512")

    fill(page, "a red bicycle on a beach", (640, 384), steps=2, seed=7)
    page.click("#generate")
    wait_for_image(page, 640, 384)
    expect(page.locator(".result-group")).to_have_count(2)
    expect(page.locator(".result-group").first.locator("figcaption")).to_contain_text("640\u00d7384")
    screenshot(page, "demo-local-results")
    assert console_errors(page) == []


def test_cancel_a_running_job(site: str, new_page: Callable[..., Page]) -> None:
    page = open_demo(new_page, site)
    fill(page, "this one is cancelled", "square", steps=50, seed=1)
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "IN_PROGRESS")
    request_id = page.locator("#request-id").inner_text()
    page.click("#cancel")
    expect(page.locator("#status")).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#error")).to_have_attribute("data-kind", "cancelled")
    assert page.is_enabled("#generate")
    # The worker really stopped: the job ended without a result (cancelled: 499).
    queue = Queue(f"{site}/api/fal/proxy")
    status = queue.wait(request_id)
    assert status["status"] == "COMPLETED"
    assert queue.result(request_id).status_code == 499
    expect(page.locator("img.result-image")).to_have_count(0)


def test_rate_limit_says_which_limit_and_when_to_retry(
    tmp_path: Path, new_page: Callable[..., Page], screenshot: Callable[[Page, str], Path],
) -> None:
    limits = {"enabled": True, "submit": "1/minute", "cost": "", "polling": "",
              "global_cost": "", "concurrency": 0}
    settings = demo_settings(tmp_path, 0.0, limits=limits)
    with running_proxy(settings) as server:
        page = open_demo(new_page, server.url, PHONE)
        submits: list[str] = []
        page.on("request", lambda r: submits.append(r.url) if r.method == "POST" else None)
        fill(page, "the first one is fine", "square", steps=1, seed=3)
        page.click("#generate")
        wait_for_image(page, 512, 512)
        page.fill("#prompt", "one too many")
        page.click("#generate")
        error = page.locator("#error[data-kind='rate-limit']")
        # The page stops the client's retries (~7 s) when the reset is a minute away.
        expect(error).to_be_visible(timeout=20_000)
        expect(error).to_contain_text("Rate limit reached — try again in")
        expect(error).to_contain_text("submit limit")
        assert error.get_attribute("data-limit") == "submit"
        assert 1 <= int(error.get_attribute("data-retry-after") or "0") <= 60
        expect(page.locator("#status")).to_have_attribute("data-state", "error")
        assert page.is_enabled("#generate")
        # Nothing was queued for the refused submit: still one result, no new request id.
        expect(page.locator(".result-group")).to_have_count(1)
        assert page.locator("#request-id").is_hidden()
        # One refused submit, not the client's three retries: the reset is a minute away.
        assert len(submits) == 2
        screenshot(page, "demo-local-phone-rate-limit")


def test_phone_sized_screen(site: str, new_page: Callable[..., Page],
                            screenshot: Callable[[Page, str], Path]) -> None:
    page = open_demo(new_page, site, PHONE)
    fill(page, "a small screen", (768, 512), steps=2, seed=11)
    page.click("#generate")
    wait_for_image(page, 768, 512)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
    box = page.locator(".result-group img.result-image").first.bounding_box()
    assert box is not None and box["width"] <= PHONE[0]
    screenshot(page, "demo-local-phone-result")
