"""The demo worker: no GPU, no weights; a deterministic picture from prompt, seed and size.

It exists so the whole flow (queue, progress, images, cancel) can be tried on any machine.
Every log line says it is a demo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import random
import time
from typing import Any

from PIL import Image, ImageDraw

from ..store import Job
from .base import OnLog, OnProgress, cancelled

__all__ = ["DemoWorker", "demo_image"]


def demo_image(prompt: str, seed: int, width: int, height: int, fmt: str, index: int = 0) -> bytes:
    """The same prompt, seed, size and index always give the same bytes."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    rng = random.Random(digest)
    top, bottom = tuple(digest[0:3]), tuple(digest[3:6])
    # a vertical gradient, built small and scaled up (fast at any size)
    strip = Image.new("RGB", (1, 256))
    strip.putdata([tuple(int(top[c] + (bottom[c] - top[c]) * y / 255) for c in range(3))
                   for y in range(256)])
    image = strip.resize((width, height))
    draw = ImageDraw.Draw(image)
    for _ in range(6 + digest[6] % 6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(8, max(9, min(width, height) // 4))
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=color)
        else:
            draw.rectangle((x0 - r, y0 - r, x0 + r, y0 + r), fill=color)
    out = io.BytesIO()
    image.save(out, format="PNG" if fmt == "png" else "JPEG", quality=85)
    return out.getvalue()


class DemoWorker:
    """In-process `WorkerAdapter`; `step_seconds` is the pretend time per inference step."""

    def __init__(self, name: str, concurrency: int, step_seconds: float) -> None:
        self.name = name
        self.concurrency = concurrency
        self.step_seconds = step_seconds

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    async def run(
        self, job: Job, on_progress: OnProgress, on_log: OnLog, cancel: asyncio.Event
    ) -> dict[str, Any]:
        inp = job.input
        steps: int = inp["num_inference_steps"]
        width, height = inp["image_size"]["width"], inp["image_size"]["height"]
        fmt: str = inp["output_format"]
        started = time.perf_counter()
        await on_log("demo worker: no model, drawing a placeholder image (not FLUX)", "INFO")
        for step in range(1, steps + 1):
            if cancel.is_set():
                raise cancelled()
            if self.step_seconds:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel.wait(), self.step_seconds)
                if cancel.is_set():
                    raise cancelled()
            await on_progress(step, steps)
        images = []
        content_type = f"image/{fmt}"
        for index in range(inp["num_images"]):
            data = await asyncio.to_thread(
                demo_image, inp["prompt"], inp["seed"], width, height, fmt, index)
            url = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
            images.append({"url": url, "width": width, "height": height,
                           "content_type": content_type})
        return {
            "images": images,
            "timings": {"inference": time.perf_counter() - started},
            "seed": inp["seed"],
            "has_nsfw_concepts": [False] * len(images),
            "prompt": inp["prompt"],
        }
