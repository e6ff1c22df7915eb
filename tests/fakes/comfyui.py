"""A fake ComfyUI server, written from ComfyUI's documented HTTP and websocket API.

A real Starlette app on a real port. `POST /prompt {"prompt", "client_id"}` queues an
API-format workflow and answers `{"prompt_id", "number", "node_errors"}`; one prompt runs at a
time, sending `status`, `execution_start`, `execution_cached`, `executing`, `progress`
{value, max}, `executed`, `execution_success` (or `execution_error` /
`execution_interrupted`) to the client's `/ws?clientId=` socket. The sampler's steps come from
the workflow's BasicScheduler/KSampler node; SaveImage's output is a real PNG of the
EmptySD3LatentImage size (`batch_size` of them), listed by `/history/{id}` and served by
`/view`. `POST /queue {"delete": [...]}` drops queued prompts, `POST /interrupt` stops the
running one; both are recorded (`deleted`, `interrupts`). Knobs: `step_seconds`, `fail_next`,
`ready`.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from proxy.backends.local.workers.demo import demo_image
from tests.fakes.server import ServerHandle

__all__ = ["FakeComfy"]


class FakeComfy:
    def __init__(self, step_seconds: float = 0.01) -> None:
        self.step_seconds = step_seconds
        self.fail_next = 0
        self.ready = True
        self.workflows: dict[str, dict[str, Any]] = {}  # prompt id -> the workflow it got
        self.pending: list[tuple[str, str]] = []  # (prompt id, client id)
        self.running: str | None = None
        self.completed: Counter[str] = Counter()
        self.deleted: list[str] = []
        self.interrupts: list[dict[str, Any]] = []
        self.history: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self._sockets: dict[str, WebSocket] = {}
        self._number = itertools.count()
        self._work: asyncio.Event | None = None
        self._interrupt = False
        self._executor: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[
            Route("/system_stats", self._system_stats),
            Route("/prompt", self._prompt, methods=["POST"]),
            Route("/queue", self._queue, methods=["GET", "POST"]),
            Route("/interrupt", self._interrupt_route, methods=["POST"]),
            Route("/history/{prompt_id}", self._history),
            Route("/view", self._view),
            WebSocketRoute("/ws", self._ws),
        ])
        self.server: ServerHandle | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> FakeComfy:
        self.server = ServerHandle(self.app).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # --- HTTP ---------------------------------------------------------------------------------

    async def _system_stats(self, request: Request) -> Response:
        if not self.ready:
            return JSONResponse({"error": "starting"}, status_code=503)
        return JSONResponse({"system": {"os": "posix", "comfyui_version": "fake"},
                             "devices": [{"name": "cpu", "type": "cpu"}]})

    async def _prompt(self, request: Request) -> Response:
        body = await request.json()
        workflow = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(workflow, dict) or not workflow or not all(
                isinstance(n, dict) and "class_type" in n for n in workflow.values()):
            return JSONResponse({"error": {"type": "invalid_prompt", "message": "bad prompt",
                                           "details": "", "extra_info": {}},
                                 "node_errors": {}}, status_code=400)
        prompt_id = str(uuid.uuid4())
        self.workflows[prompt_id] = workflow
        self.pending.append((prompt_id, str(body.get("client_id", ""))))
        if self._executor is None:
            self._work = asyncio.Event()
            self._executor = asyncio.ensure_future(self._execute_loop())
        assert self._work is not None
        self._work.set()
        await self._broadcast_status()
        return JSONResponse({"prompt_id": prompt_id, "number": next(self._number),
                             "node_errors": {}})

    async def _queue(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({
                "queue_running": [[0, self.running, {}, {}, []]] if self.running else [],
                "queue_pending": [[0, pid, {}, {}, []] for pid, _ in self.pending]})
        body = await request.json()
        for prompt_id in body.get("delete", []):
            self.deleted.append(prompt_id)
            self.pending = [p for p in self.pending if p[0] != prompt_id]
        if body.get("clear"):
            self.pending.clear()
        return Response(status_code=200)

    async def _interrupt_route(self, request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        self.interrupts.append(body)
        target = body.get("prompt_id") if isinstance(body, dict) else None
        if self.running and (target is None or target == self.running):
            self._interrupt = True
        return Response(status_code=200)

    async def _history(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry else {})

    async def _view(self, request: Request) -> Response:
        q = request.query_params
        data = self.files.get(f"{q.get('type', 'output')}/{q.get('subfolder', '')}/"
                              f"{q.get('filename', '')}")
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/png")

    # --- websocket ----------------------------------------------------------------------------

    async def _ws(self, ws: WebSocket) -> None:
        client_id = ws.query_params.get("clientId") or uuid.uuid4().hex
        await ws.accept()
        self._sockets[client_id] = ws
        await ws.send_json({"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": len(self.pending)}}, "sid": client_id}})
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if self._sockets.get(client_id) is ws:
                del self._sockets[client_id]

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        ws = self._sockets.get(client_id)
        if ws is not None:
            try:
                await ws.send_json({"type": kind, "data": data})
            except Exception:  # the client went away; ComfyUI carries on
                self._sockets.pop(client_id, None)

    async def _broadcast_status(self) -> None:
        remaining = len(self.pending) + (1 if self.running else 0)
        for client_id in list(self._sockets):
            await self._send(client_id, "status",
                             {"status": {"exec_info": {"queue_remaining": remaining}}})

    # --- execution ----------------------------------------------------------------------------

    async def _execute_loop(self) -> None:
        assert self._work is not None
        while True:
            if not self.pending:
                self._work.clear()
                await self._work.wait()
                continue
            prompt_id, client_id = self.pending.pop(0)
            self.running = prompt_id
            self._interrupt = False
            try:
                await self._execute(prompt_id, client_id, self.workflows[prompt_id])
            finally:
                self.running = None
                await self._broadcast_status()

    async def _execute(self, prompt_id: str, client_id: str, workflow: dict[str, Any]) -> None:
        def find(*classes: str) -> tuple[str, dict[str, Any]]:
            for node_id, node in workflow.items():
                if node["class_type"] in classes:
                    return node_id, node["inputs"]
            raise KeyError(classes)

        base = {"prompt_id": prompt_id}
        await self._send(client_id, "execution_start", {**base, "timestamp": 0})
        await self._send(client_id, "execution_cached", {**base, "nodes": []})
        sampler_id, _ = find("SamplerCustomAdvanced", "KSampler")
        _, sched = find("BasicScheduler", "KSampler")
        _, latent = find("EmptySD3LatentImage", "EmptyLatentImage")
        _, text = find("CLIPTextEncode")
        _, noise = find("RandomNoise", "KSampler")
        save_id, _ = find("SaveImage")
        steps = int(sched["steps"])
        await self._send(client_id, "executing", {**base, "node": sampler_id,
                                                  "display_node": sampler_id})
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_seconds)
            if self._interrupt:
                await self._send(client_id, "execution_interrupted", {
                    **base, "node_id": sampler_id, "node_type": "SamplerCustomAdvanced",
                    "executed": []})
                self.history[prompt_id] = {"outputs": {}, "status": {
                    "status_str": "error", "completed": False, "messages": []}}
                return
            await self._send(client_id, "progress", {**base, "value": step, "max": steps,
                                                     "node": sampler_id})
        if self.fail_next > 0:
            self.fail_next -= 1
            await self._send(client_id, "execution_error", {
                **base, "node_id": sampler_id, "node_type": "SamplerCustomAdvanced",
                "exception_message": "CUDA out of memory (fake)",
                "exception_type": "torch.OutOfMemoryError", "traceback": [],
                "executed": [], "current_inputs": {}, "current_outputs": {}})
            self.history[prompt_id] = {"outputs": {}, "status": {
                "status_str": "error", "completed": False, "messages": []}}
            return
        seed = int(noise.get("noise_seed", noise.get("seed", 0)))
        width, height = int(latent["width"]), int(latent["height"])
        images = []
        for index in range(int(latent.get("batch_size", 1))):
            data = await asyncio.to_thread(demo_image, str(text["text"]), seed, width, height,
                                           "png", index)
            name = f"flux-proxy_{prompt_id[:8]}_{index:05}_.png"
            self.files[f"output//{name}"] = data
            images.append({"filename": name, "subfolder": "", "type": "output"})
        await self._send(client_id, "executing", {**base, "node": save_id,
                                                  "display_node": save_id})
        await self._send(client_id, "executed", {**base, "node": save_id,
                                                 "display_node": save_id,
                                                 "output": {"images": images}})
        self.history[prompt_id] = {
            "prompt": [0, prompt_id, workflow, {"client_id": client_id}, [save_id]],
            "outputs": {save_id: {"images": images}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        self.completed[prompt_id] += 1
        await self._send(client_id, "executing", {**base, "node": None})
        await self._send(client_id, "execution_success", {**base, "timestamp": 0})
