"""The HTTP worker adapter reads what the worker contract (docs/worker.md) allows on the wire.

A small contract worker (a real server) sends what a GPU worker sends but a tiny test model
cannot produce cheaply: a real-size result (a 1024² PNG is megabytes of data URI on one SSE
line), keep-alive comments split across writes, and endpoints it does not serve.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import ServerHandle
from tests.js_client import run_flow
from tests.local_support import local_settings
from tests.support import proxy_url, running_proxy

INPUT = {"prompt": "a harbour", "image_size": "square_hd", "num_inference_steps": 2, "seed": 3}
BIG = os.urandom(3 * 1_048_576)  # incompressible: what a detailed 1024² PNG weighs


class ContractWorker:
    """Serves `fal-ai/flux/dev` only; every job returns `BIG` as a PNG data URI."""

    def __init__(self) -> None:
        self.jobs = 0
        self.app = Starlette(routes=[
            Route("/readyz", self._readyz),
            Route("/fal-ai/flux/dev", self._run, methods=["POST"]),
            Route("/{path:path}", self._missing, methods=["POST"]),
        ])

    async def _readyz(self, request: Request) -> Response:
        return JSONResponse({"ready": True, "busy": False})

    async def _missing(self, request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def _run(self, request: Request) -> Response:
        self.jobs += 1
        inp = await request.json()
        return StreamingResponse(self._events(inp), media_type="text/event-stream")

    async def _events(self, inp: dict[str, object]) -> AsyncIterator[bytes]:
        yield b": keep-"  # a comment line split across two writes
        await asyncio.sleep(0.01)
        yield b"alive\n\n"
        for step in (1, 2):
            yield _data({"type": "progress", "step": step, "total": 2})
        url = "data:image/png;base64," + base64.b64encode(BIG).decode()
        result = _data({"type": "result", "output": {
            "images": [{"url": url, "width": 1024, "height": 1024, "content_type": "image/png"}],
            "timings": {"inference": 1.0}, "seed": inp["seed"], "has_nsfw_concepts": [False],
            "prompt": inp["prompt"]}})
        for i in range(0, len(result), 65_536):  # the way a big body arrives: in pieces
            yield result[i:i + 65_536]


def _data(event: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def test_megabyte_result_line_and_unserved_endpoint(tmp_path: Path) -> None:
    worker = ContractWorker()
    with ServerHandle(worker.app) as ws:
        settings = local_settings(tmp_path, [{"name": "gpu0", "kind": "http", "url": ws.url}])
        with running_proxy(settings) as server:
            proxy = proxy_url(server, settings)
            out = run_flow("subscribe-polling", proxy, input=INPUT, logs=True)
            assert out["ok"], out
            image = out["result"]["images"][0]
            assert (image["width"], image["content_type"]) == (1024, "image/png")
            got = httpx.get(image["url"], timeout=10)
            assert got.status_code == 200 and got.content == BIG
            logs = [e["message"] for e in out["updates"][-1]["logs"]]
            assert [m for m in logs if m.startswith("step ")] == ["step 1/2", "step 2/2"]

            # an endpoint the proxy allows but this worker does not serve: a clear failure
            out = run_flow("run", proxy, endpoint="fal-ai/flux/schnell", input=INPUT)
            assert not out["ok"]
            assert out["error"]["status"] == 500
            assert out["error"]["body"] == {
                "detail": "worker gpu0 does not serve fal-ai/flux/schnell"}
    assert worker.jobs == 1
