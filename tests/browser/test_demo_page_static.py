"""The demo page (proxy/static/demo/) in headless Chromium, without the proxy.

A tiny Starlette app serves the static files under /demo/ plus a config.json the tests set.
For the run flow it also serves a *scripted* stand-in at /scripted/<scenario>: a few canned
fal queue answers (submit, status stream, result, cancel) keyed on x-fal-target-url, so the
page's rendering of progress, results and errors is checked over real HTTP with the real
bundled @fal-ai/client. The end-to-end tests against the real proxy live elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

pytestmark = pytest.mark.browser

DEMO_DIR = Path(__file__).resolve().parents[2] / "proxy" / "static" / "demo"
DESKTOP = (1280, 800)
PHONE = (375, 740)
SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
RATE_LIMIT_BODY = {
    "detail": "per-user request limit (10/minute) reached, retry in 7 s",
    "limit": "10/minute",
    "retry_after": 7,
}


class Scripted:
    """Canned fal queue answers, enough for @fal-ai/client's subscribe in streaming mode."""

    def __init__(self) -> None:
        self.inputs: dict[str, dict[str, Any]] = {}
        self.cancelled: dict[str, asyncio.Event] = {}
        self.cancel_calls: list[str] = []

    async def handle(self, request: Request) -> Response:
        scenario = request.path_params["scenario"]
        target = urlsplit(request.headers.get("x-fal-target-url", ""))
        parts = target.path.strip("/").split("/")
        if request.method == "POST":
            return await self.submit(scenario, request)
        request_id = parts[parts.index("requests") + 1]
        if request.method == "PUT" and parts[-1] == "cancel":
            self.cancel_calls.append(request_id)
            self.cancelled.setdefault(request_id, asyncio.Event()).set()
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        if parts[-2:] == ["status", "stream"]:
            if scenario == "ratelimit":
                return JSONResponse(RATE_LIMIT_BODY, status_code=429, headers={"Retry-After": "7"})
            return StreamingResponse(
                self.events(scenario, request_id), media_type="text/event-stream"
            )
        return self.result(request_id)

    async def submit(self, scenario: str, request: Request) -> Response:
        if scenario == "invalid":
            return JSONResponse(
                {
                    "detail": [
                        {
                            "loc": ["body", "num_inference_steps"],
                            "msg": "Input should be less than or equal to 12 in demo mode",
                            "type": "less_than_equal",
                        },
                        {
                            "loc": ["body", "image_size", "width"],
                            "msg": "Input should be a multiple of 16",
                            "type": "multiple_of",
                        },
                    ]
                },
                status_code=422,
            )
        request_id = str(uuid.uuid4())
        self.inputs[request_id] = await request.json()
        self.cancelled[request_id] = asyncio.Event()
        return JSONResponse(
            {"status": "IN_QUEUE", "request_id": request_id, "queue_position": 1},
            headers={"x-fal-request-id": request_id},
        )

    async def events(self, scenario: str, request_id: str) -> AsyncIterator[str]:
        def event(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data)}\n\n"

        yield event({"status": "IN_QUEUE", "queue_position": 1})
        if scenario in ("queued", "stuck"):  # stays queued until cancelled
            yield event({"status": "IN_QUEUE", "queue_position": 2})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancelled[request_id].wait(), timeout=15)
            if scenario == "stuck":  # a server that never closes the stream
                await asyncio.sleep(15)
            yield event({"status": "COMPLETED", "logs": [], "error": "cancelled"})
            return
        await asyncio.sleep(0.05)
        yield event({"status": "IN_QUEUE", "queue_position": 0})
        total = 4
        for step in range(1, total + 1):
            await asyncio.sleep(0.05)
            log = {
                "message": f"step {step}/{total}",
                "level": "INFO",
                "source": "USER",
                "timestamp": "2026-01-01T12:00:00Z",
            }
            yield event({"status": "IN_PROGRESS", "logs": [log]})
        yield event({"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 0.42}})

    def result(self, request_id: str) -> Response:
        data = self.inputs[request_id]
        size = data["image_size"]
        width, height = (size["width"], size["height"]) if isinstance(size, dict) else SIZES[size]
        images = [
            {
                "url": f"/img/{width}x{height}/{i}.svg",
                "width": width,
                "height": height,
                "content_type": "image/svg+xml",
            }
            for i in range(data.get("num_images", 1))
        ]
        body = {
            "images": images,
            "seed": data.get("seed", 1234),
            "timings": {"inference": 0.42},
            "has_nsfw_concepts": [False] * len(images),
            "prompt": data["prompt"],
        }
        return JSONResponse(body, headers={"x-fal-request-id": request_id})


async def placeholder_svg(request: Request) -> Response:
    width, height = (int(v) for v in request.path_params["size"].split("x"))
    hue = (int(request.path_params["index"]) * 70 + 200) % 360
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><defs><linearGradient id="g" x2="1" y2="1">'
        f'<stop offset="0" stop-color="hsl({hue},70%,55%)"/>'
        f'<stop offset="1" stop-color="hsl({hue + 60},70%,35%)"/></linearGradient></defs>'
        f'<rect width="100%" height="100%" fill="url(#g)"/></svg>'
    )
    return Response(svg, media_type="image/svg+xml")


class Site:
    def __init__(self, live_server: Callable[[Any], str]) -> None:
        self.config: dict[str, Any] | None = None
        self.scripted = Scripted()

        async def config_json(request: Request) -> Response:
            if self.config is None:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return JSONResponse(self.config)

        app = Starlette(
            routes=[
                Route("/demo/config.json", config_json),
                Mount("/demo", StaticFiles(directory=DEMO_DIR, html=True)),
                Route("/scripted/{scenario}", self.scripted.handle, methods=["GET", "POST", "PUT"]),
                Route("/img/{size}/{index}.svg", placeholder_svg),
            ]
        )
        self.url = live_server(app)

    def use(self, proxy_url: str, mode: str = "demo") -> None:
        self.config = {
            "proxyUrl": proxy_url,
            "endpoint": "fal-ai/flux/dev",
            "mode": mode,
            "title": "FLUX.1 [dev] test",
        }


@pytest.fixture(scope="module")
def site(live_server: Callable[[Any], str]) -> Site:
    return Site(live_server)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_demo(new_page: Callable[..., Any], site: Site, size: tuple[int, int], **kw: Any) -> Any:
    page = new_page(*size, **kw)
    page.goto(f"{site.url}/demo/")
    page.wait_for_selector("body[data-ready='true']")
    return page


def no_horizontal_scroll(page: Any, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"horizontal scroll: scrollWidth={scroll_width} > {width}"


def wait_for_images(page: Any) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('img.result-image')].every(i => i.complete)"
    )


def test_page_loads_with_client_and_defaults(new_page, site, console_errors, screenshot):
    site.use("/scripted/ok")
    page = open_demo(new_page, site, DESKTOP)

    assert page.evaluate("typeof window.FalClient.fal.subscribe") == "function"
    assert page.evaluate("window.fluxDemo.fal === window.FalClient.fal")
    assert page.evaluate("window.fluxDemo.config.proxyUrl") == "/scripted/ok"
    assert page.title() == "FLUX.1 [dev] test — flux-proxy demo"
    assert page.inner_text("#mode-badge") == "demo backend — images are synthetic"

    assert page.input_value("#prompt") == ""
    assert page.input_value("#image-size") == "landscape_4_3"
    assert page.eval_on_selector_all("#image-size option", "os => os.map(o => o.value)") == [
        *SIZES,
        "custom",
    ]
    assert page.input_value("#steps") == "28"
    assert page.get_attribute("#steps", "min") == "1"
    assert page.get_attribute("#steps", "max") == "50"
    assert page.input_value("#guidance") == "3.5"
    assert page.get_attribute("#guidance", "step") == "0.5"
    assert page.input_value("#seed") == ""
    assert page.input_value("#num-images") == "1"
    assert page.get_attribute("#num-images", "max") == "4"
    assert page.input_value("#output-format") == "jpeg"
    assert page.is_hidden("#width") and page.is_hidden("#height")
    assert page.is_enabled("#generate") and page.is_disabled("#cancel")
    assert page.is_hidden("#error")
    assert page.inner_text("#status") == "Ready"
    assert page.eval_on_selector("#progress", "e => e.tagName") == "PROGRESS"
    # every form control has a label
    unlabeled = page.eval_on_selector_all(
        "input, select, textarea", "es => es.filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabeled == []

    screenshot(page, "demo-desktop-initial")
    assert console_errors(page) == []


def test_custom_size_reveals_width_and_height(new_page, site):
    site.use("/scripted/ok")
    page = open_demo(new_page, site, DESKTOP)
    page.select_option("#image-size", "custom")
    assert page.is_visible("#width") and page.is_visible("#height")
    page.fill("#prompt", "x")
    page.fill("#width", "640")
    page.fill("#height", "480")
    assert page.evaluate("fluxDemo.buildInput().image_size") == {"width": 640, "height": 480}
    page.select_option("#image-size", "square_hd")
    assert page.is_hidden("#width") and page.is_hidden("#height")
    assert page.evaluate("fluxDemo.buildInput().image_size") == "square_hd"


def test_phone_layout_has_no_horizontal_scroll(new_page, site, console_errors, screenshot):
    site.use("/scripted/ok", mode="hosted")
    page = open_demo(new_page, site, PHONE, is_mobile=True, has_touch=True)
    no_horizontal_scroll(page, PHONE[0])
    assert page.inner_text("#mode-badge") == "fal.ai hosted backend"
    # single column: the results column sits below the form
    form = page.locator("#generate-form").bounding_box()
    output = page.locator("#results").bounding_box()
    assert output["y"] >= form["y"] + form["height"]
    page.select_option("#image-size", "custom")
    no_horizontal_scroll(page, PHONE[0])
    screenshot(page, "demo-phone-initial")
    assert console_errors(page) == []


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_unreachable_proxy_shows_network_error(new_page, site, screenshot, size):
    site.use(f"http://127.0.0.1:{closed_port()}/api/fal/proxy")
    page = open_demo(new_page, site, size)
    page.fill("#prompt", "a lighthouse at dusk")
    page.click("#generate")
    error = page.wait_for_selector("#error[data-kind='network']", state="visible")
    assert "Cannot reach the proxy" in error.inner_text()
    assert page.is_enabled("#generate") and page.is_disabled("#cancel")
    no_horizontal_scroll(page, size[0])
    screenshot(page, f"demo-{'phone' if size == PHONE else 'desktop'}-network-error")


def test_missing_config_falls_back_to_defaults(new_page, site, screenshot):
    site.config = None  # config.json answers 404
    page = open_demo(new_page, site, DESKTOP)
    assert page.evaluate("fluxDemo.config") == {
        "proxyUrl": "/api/fal/proxy",
        "endpoint": "fal-ai/flux/dev",
        "mode": "unknown",
        "title": "FLUX.1 [dev]",
    }
    assert page.get_attribute("#mode-badge", "data-mode") == "unknown"
    # /api/fal/proxy does not exist on this test server: a plain-text 404 from the "proxy"
    page.fill("#prompt", "x")
    page.click("#generate")
    error = page.wait_for_selector("#error[data-kind='api']", state="visible")
    assert "HTTP 404" in error.inner_text()


def test_generate_renders_progress_logs_and_images(new_page, site, console_errors, screenshot):
    site.use("/scripted/ok")
    for size, name in [(DESKTOP, "desktop"), (PHONE, "phone")]:
        page = open_demo(new_page, site, size)
        page.fill("#prompt", "a lighthouse on a cliff at dusk, volumetric light")
        page.select_option("#image-size", "landscape_16_9")
        page.fill("#num-images", "2")
        page.fill("#seed", "42")
        page.click("#generate")
        page.wait_for_selector("#status[data-state='done']")
        images = page.locator("#results img.result-image")
        assert images.count() == 2
        for i in range(2):
            assert images.nth(i).get_attribute("width") == "1024"
            assert images.nth(i).get_attribute("height") == "576"
            href = images.nth(i).locator("xpath=..").get_attribute("href")
            assert href == f"{site.url}/img/1024x576/{i}.svg"
        wait_for_images(page)
        assert "seed 42" in page.inner_text("#results")
        assert "inference 0.42 s" in page.inner_text("#results")
        assert page.eval_on_selector("#progress", "p => p.value") == 100
        assert "step 4/4" in page.inner_text("#logs")
        assert page.is_visible("#request-id")
        assert page.is_hidden("#error")
        assert page.is_enabled("#generate") and page.is_disabled("#cancel")
        no_horizontal_scroll(page, size[0])
        screenshot(page, f"demo-{name}-results")
        assert console_errors(page) == []


@pytest.mark.parametrize("scenario", ["queued", "stuck"])
def test_cancel_while_queued(new_page, site, screenshot, scenario):
    site.use(f"/scripted/{scenario}")
    page = open_demo(new_page, site, DESKTOP)
    page.fill("#prompt", "never finishes")
    page.click("#generate")
    page.wait_for_selector("#status[data-state='IN_QUEUE'][data-queue-position='2']")
    assert page.inner_text("#status") == "In queue — 2 ahead of you"
    assert page.eval_on_selector("#progress", "p => p.position") == -1  # indeterminate
    request_id = page.inner_text("#request-id")
    assert page.is_enabled("#cancel") and page.is_disabled("#generate")
    if scenario == "queued":
        screenshot(page, "demo-desktop-queued")
    page.click("#cancel")
    error = page.wait_for_selector("#error[data-kind='cancelled']", state="visible")
    assert "Cancelled" in error.inner_text()
    assert page.inner_text("#status") == "Cancelled"
    assert site.scripted.cancel_calls[-1] == request_id
    assert page.is_enabled("#generate") and page.is_disabled("#cancel")
    # "queued" now ends its stream with COMPLETED: the cancelled run must stay cancelled
    page.wait_for_timeout(300)
    assert page.inner_text("#status") == "Cancelled"
    assert page.locator("#results img.result-image").count() == 0
    if scenario == "queued":
        screenshot(page, "demo-desktop-cancelled")


def test_rate_limit_message(new_page, site, screenshot):
    site.use("/scripted/ratelimit")
    page = open_demo(new_page, site, PHONE)
    page.fill("#prompt", "too many")
    page.click("#generate")
    error = page.wait_for_selector("#error[data-kind='rate-limit']", state="visible")
    text = error.inner_text()
    assert "Rate limit reached — try again in 7 s" in text
    assert RATE_LIMIT_BODY["detail"] in text
    assert page.get_attribute("#error", "data-retry-after") == "7"
    no_horizontal_scroll(page, PHONE[0])
    screenshot(page, "demo-phone-rate-limit")


def test_validation_errors_are_listed_and_highlighted(new_page, site, screenshot):
    site.use("/scripted/invalid")
    page = open_demo(new_page, site, DESKTOP)
    page.fill("#prompt", "x")
    page.select_option("#image-size", "custom")
    page.click("#generate")
    error = page.wait_for_selector("#error[data-kind='validation']", state="visible")
    items = error.query_selector_all("li")
    assert [li.inner_text() for li in items] == [
        "num_inference_steps: Input should be less than or equal to 12 in demo mode",
        "width: Input should be a multiple of 16",
    ]
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    assert page.get_attribute("#width", "aria-invalid") == "true"
    assert page.get_attribute("#prompt", "aria-invalid") is None
    screenshot(page, "demo-desktop-validation")
    page.fill("#steps", "10")  # editing a field clears its highlight
    assert page.get_attribute("#steps", "aria-invalid") is None


def test_dark_mode_screenshot(new_page, site, console_errors, screenshot):
    site.use("/scripted/ok")
    page = open_demo(new_page, site, DESKTOP, color_scheme="dark")
    page.fill("#prompt", "a neon city in the rain")
    page.click("#generate")
    page.wait_for_selector("#status[data-state='done']")
    wait_for_images(page)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 17, 21)"
    screenshot(page, "demo-desktop-dark")
    assert console_errors(page) == []
