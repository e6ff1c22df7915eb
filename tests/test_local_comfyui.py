"""ComfyUI as a local worker, driven by the real `@fal-ai/client` through the proxy.

The fake ComfyUI speaks ComfyUI's documented API (`tests/fakes/comfyui.py`): the user's input
reaches the shipped FLUX workflow, progress shows up in `onQueueUpdate`, the image has the
requested size and is served by the proxy, and cancel deletes a queued prompt or interrupts
the running one.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from proxy.backends.local.workers import build_worker
from proxy.settings import ConfigError, Settings
from tests.fakes.comfyui import FakeComfy
from tests.js_client import run_flow
from tests.local_support import Queue, local_settings, wait_until
from tests.support import proxy_url, running_proxy

INPUT = {"prompt": "a lighthouse at dusk", "seed": 42, "image_size": {"width": 320,
         "height": 192}, "num_inference_steps": 6, "guidance_scale": 4.5}


def _comfy_settings(tmp_path: Path, comfy: FakeComfy, concurrency: int = 1) -> Settings:
    return local_settings(tmp_path, [{"name": "comfy", "kind": "comfyui", "url": comfy.url,
                                      "concurrency": concurrency}])


def test_subscribe_polling_and_streaming_run_the_flux_workflow(tmp_path: Path) -> None:
    with FakeComfy() as comfy:
        settings = _comfy_settings(tmp_path, comfy)
        with running_proxy(settings) as server:
            proxy = proxy_url(server, settings)
            out = run_flow("subscribe-polling", proxy, input=INPUT, logs=True)
            assert out["ok"], out
            result = out["result"]
            assert result["seed"] == 42 and result["prompt"] == INPUT["prompt"]
            image = result["images"][0]
            assert (image["width"], image["height"]) == (320, 192)
            assert image["content_type"] == "image/jpeg"  # fal's default output_format
            assert image["url"].startswith(server.url)  # served by the proxy, not ComfyUI
            got = httpx.get(image["url"])
            assert got.status_code == 200
            with Image.open(io.BytesIO(got.content)) as picture:
                assert picture.size == (320, 192) and picture.format == "JPEG"
            messages = [e["message"] for u in out["updates"] for e in (u.get("logs") or [])]
            assert "step 3/6" in messages and "step 6/6" in messages
            assert any(u["status"] == "IN_PROGRESS" for u in out["updates"])

            # The user's input reached the shipped workflow's nodes.
            (workflow,) = comfy.workflows.values()
            assert workflow["6"]["inputs"]["text"] == INPUT["prompt"]
            assert workflow["25"]["inputs"]["noise_seed"] == 42
            assert workflow["27"]["inputs"] == {"width": 320, "height": 192, "batch_size": 1}
            assert workflow["17"]["inputs"]["steps"] == 6
            assert workflow["26"]["inputs"]["guidance"] == 4.5

            out = run_flow("subscribe-streaming", proxy, logs=True, input={
                **INPUT, "output_format": "png", "num_images": 2})
            assert out["ok"], out
            images = out["result"]["images"]
            assert [(i["width"], i["height"], i["content_type"]) for i in images] == [
                (320, 192, "image/png")] * 2
            assert any(u["status"] == "IN_PROGRESS" for u in out["updates"])
            assert len(comfy.completed) == 2

            comfy.fail_next = 1  # a ComfyUI node error: a clear error in status and result
            out = run_flow("subscribe-polling", proxy, input=INPUT, logs=True)
            assert not out["ok"]
            assert out["error"]["status"] == 500
            assert "CUDA out of memory (fake)" in out["error"]["body"]["detail"]
            assert "CUDA out of memory" in out["updates"][-1]["error"]


def test_cancel_deletes_a_queued_prompt_and_interrupts_the_running_one(tmp_path: Path) -> None:
    with FakeComfy(step_seconds=0.2) as comfy:
        # Two jobs at once on ComfyUI: one runs, the other waits in ComfyUI's own queue.
        settings = _comfy_settings(tmp_path, comfy, concurrency=2)
        with running_proxy(settings) as server:
            proxy = proxy_url(server, settings)
            queue = Queue(proxy)
            slow = {**INPUT, "num_inference_steps": 50}  # 10 s: far longer than the test
            first = queue.submit(slow).json()["request_id"]
            wait_until(lambda: comfy.running is not None)
            second = queue.submit(slow).json()["request_id"]
            wait_until(lambda: len(comfy.pending) == 1)
            running_prompt, (queued_prompt, _) = comfy.running, comfy.pending[0]

            out = run_flow("cancel", proxy, request_id=second)
            assert out["ok"], out
            wait_until(lambda: queued_prompt in comfy.deleted)
            assert queue.wait(second)["error_type"] == "client_cancelled"
            assert queue.result(second).status_code == 499

            queue.wait(first, "IN_PROGRESS")
            out = run_flow("cancel", proxy, request_id=first)
            assert out["ok"], out
            wait_until(lambda: comfy.interrupts == [{"prompt_id": running_prompt}])
            done = queue.wait(first)
            assert done["error_type"] == "client_cancelled"
            # The fake stops at its next step boundary, a moment after the proxy's answer.
            wait_until(lambda: comfy.running is None)
            assert not comfy.completed
            assert comfy.deleted == [queued_prompt]  # the running one was never deleted


def test_a_workflow_that_is_not_api_format_is_refused_at_start(tmp_path: Path) -> None:
    ui_export = tmp_path / "ui.json"
    ui_export.write_text('{"nodes": [], "links": []}')  # the UI format, not "Export (API)"
    settings = local_settings(tmp_path, [{"kind": "comfyui", "url": "http://127.0.0.1:1",
                                          "comfyui": {"workflow": str(ui_export)}}])
    with pytest.raises(ConfigError, match=r"Export \(API\)"):
        build_worker(settings.local.worker_list()[0])
