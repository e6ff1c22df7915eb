"""The demo page in headless Chromium, through the real proxy, against the fake hosted upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.fakes.fal_upstream import FakeFal
from tests.support import FAKE_KEY, proxy_settings, running_proxy

pytestmark = pytest.mark.browser


@pytest.fixture
def site(fake_fal: FakeFal) -> Iterator[str]:
    settings = proxy_settings(fake_fal, demo={"page": True})
    with running_proxy(settings) as server:
        yield server.url


def test_generate_renders_image_of_requested_size(
    site: str, fake_fal: FakeFal, new_page: Callable[..., Page],
    screenshot: Callable[[Page, str], Path],
) -> None:
    page = new_page()
    page.goto(f"{site}/")  # redirects to /demo/
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#mode-badge")).to_have_attribute("data-mode", "hosted")
    page.fill("#prompt", "a red bicycle on a beach")
    page.select_option("#image-size", "square")
    page.fill("#seed", "42")
    page.click("#generate")
    image = page.locator("img.result-image").first
    expect(image).to_be_visible(timeout=15_000)
    assert image.get_attribute("width") == "512" and image.get_attribute("height") == "512"
    page.wait_for_function(
        "() => { const i = document.querySelector('img.result-image');"
        " return i && i.complete && i.naturalWidth === 512 && i.naturalHeight === 512; }"
    )
    screenshot(page, "demo-hosted-result")
    (submit,) = fake_fal.requests(host="queue.fal.run", method="POST")
    assert submit.json()["prompt"] == "a red bicycle on a beach"
    assert submit.json()["seed"] == 42 and submit.json()["image_size"] == "square"
    assert submit.headers["authorization"] == f"Key {FAKE_KEY}"


def test_cancel_a_queued_job(site: str, fake_fal: FakeFal, new_page: Callable[..., Page]
                             ) -> None:
    fake_fal.queue_seconds = 30
    page = new_page()
    page.goto(f"{site}/demo/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.fill("#prompt", "slow job")
    page.click("#generate")
    expect(page.locator("#status")).to_have_attribute("data-state", "IN_QUEUE", timeout=10_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_attribute("data-state", "cancelled", timeout=10_000)
    assert [r for r in fake_fal.requests(method="PUT") if r.path.endswith("/cancel")]
    expect(page.locator("img.result-image")).to_have_count(0)


def test_validation_error_names_the_field(site: str, fake_fal: FakeFal,
                                          new_page: Callable[..., Page]) -> None:
    page = new_page()
    page.goto(f"{site}/demo/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    # The fake answers 422 on a missing prompt; bypass the form's own required check.
    page.evaluate("window.fluxDemo.generate({image_size: 'square'})")
    error = page.locator("#error")
    expect(error).to_have_attribute("data-kind", "validation", timeout=15_000)
    expect(error).to_contain_text("prompt")
