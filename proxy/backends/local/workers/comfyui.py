"""A ComfyUI server as a worker: fal's FLUX input patched into an API-format workflow.

ComfyUI has no fal queue, only its own prompt queue, so one job is: open `/ws?clientId=`,
`POST /prompt` the patched workflow with that client id, follow `progress` / `executing` /
`execution_error` / `execution_interrupted` messages for our prompt id, then read
`/history/{prompt_id}` and fetch each saved image with `/view`. Cancel deletes a job still in
ComfyUI's queue (`POST /queue {"delete": [id]}`) and interrupts a running one
(`POST /interrupt`). Readiness is `GET /system_stats`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from ..settings import ComfySettings
from ..store import Job
from .base import JobFailed, OnLog, OnProgress, WorkerDown, cancelled
from .session import WorkerSession

__all__ = ["ComfyWorker", "load_workflow", "patch_workflow"]

# Inside the package, so pip and Docker installs have it (config/ links to it for reading).
SHIPPED_WORKFLOW = Path(__file__).resolve().parents[3] / "data" / "comfyui-flux-dev.json"


def load_workflow(path: str) -> dict[str, Any]:
    """The API-format workflow at `path` (empty: the one shipped in `config/`)."""
    from ....settings import ConfigError

    file = Path(path) if path else SHIPPED_WORKFLOW
    try:
        workflow = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError("local.workers.comfyui.workflow",
                          f"cannot read an API-format workflow from {file}: {exc}") from None
    if not isinstance(workflow, dict) or not all(
            isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ConfigError("local.workers.comfyui.workflow",
                          f"{file} is not an API-format workflow (use 'Export (API)')")
    return workflow


def _node(workflow: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The node with id `name`, else the one whose `_meta.title` is `name`."""
    if not name:
        return None
    if name in workflow:
        node: dict[str, Any] = workflow[name]
        return node
    for node in workflow.values():
        if node.get("_meta", {}).get("title") == name:
            return node
    return None


def patch_workflow(template: dict[str, Any], cfg: ComfySettings,
                   inp: dict[str, Any]) -> dict[str, Any]:
    """A copy of `template` with the prompt, seed, size, count, steps and guidance set."""
    workflow = copy.deepcopy(template)
    size = inp["image_size"]
    patches: list[tuple[str, dict[str, Any]]] = [
        (cfg.prompt_node, {"text": inp["prompt"]}),
        (cfg.size_node, {"width": size["width"], "height": size["height"],
                         "batch_size": inp["num_images"]}),
        (cfg.steps_node, {"steps": inp["num_inference_steps"]}),
        (cfg.guidance_node, {"guidance": inp["guidance_scale"]}),
    ]
    for name, values in patches:
        node = _node(workflow, name)
        if node is not None:
            node.setdefault("inputs", {}).update(values)
    seed_node = _node(workflow, cfg.seed_node)
    if seed_node is not None:
        inputs = seed_node.setdefault("inputs", {})
        inputs["seed" if "seed" in inputs else "noise_seed"] = inp["seed"]
    return workflow


def _convert(data: bytes, fmt: str) -> tuple[bytes, int, int, str]:
    """The image as `fmt` (ComfyUI saves PNG), with its size and content type."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if fmt == "png" and image.format == "PNG":
            return data, width, height, "image/png"
        out = io.BytesIO()
        if fmt == "png":
            image.save(out, format="PNG")
        else:
            image.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue(), width, height, f"image/{fmt}"


class ComfyWorker:
    """`WorkerAdapter` for the ComfyUI server at `base`; see the module docstring."""

    def __init__(self, name: str, base: str, concurrency: int, timeout: float,
                 cfg: ComfySettings) -> None:
        self.name = name
        self.base = base
        self.concurrency = concurrency
        self._timeout = timeout
        self._cfg = cfg
        self._template = load_workflow(cfg.workflow)
        self._http = WorkerSession(base, aiohttp.ClientTimeout(total=None, connect=5, sock_read=60))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ready(self) -> bool:
        return await self._http.probe("/system_stats")

    async def run(
        self, job: Job, on_progress: OnProgress, on_log: OnLog, cancel: asyncio.Event
    ) -> dict[str, Any]:
        started = time.perf_counter()
        client_id = uuid.uuid4().hex
        state: dict[str, Any] = {"prompt_id": None, "running": False}
        try:
            async with self._http.client().ws_connect(
                    f"{self.base}/ws", params={"clientId": client_id}, heartbeat=30) as ws:
                task = asyncio.ensure_future(self._follow(ws, job, client_id, state,
                                                          on_progress, on_log))
                waiter = asyncio.ensure_future(cancel.wait())
                try:
                    done, _ = await asyncio.wait({task, waiter}, timeout=self._timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    await self._stop(state)
                    if cancel.is_set():
                        raise cancelled()
                    raise JobFailed(504, {"detail": f"worker {self.name} took longer than "
                                                    f"{self._timeout:g}s"}, "request_timeout")
                prompt_id: str = task.result()
            images = await self._images(prompt_id, job.input["output_format"])
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            raise WorkerDown(f"ComfyUI worker {self.name} failed: "
                             f"{exc.__class__.__name__}: {exc}") from exc
        return {
            "images": images,
            "timings": {"inference": time.perf_counter() - started},
            "seed": job.input["seed"],
            "has_nsfw_concepts": [False] * len(images),
            "prompt": job.input["prompt"],
        }

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse, job: Job, client_id: str,
                      state: dict[str, Any], on_progress: OnProgress, on_log: OnLog) -> str:
        """Queue the workflow, then read the websocket until our prompt has run."""
        workflow = patch_workflow(self._template, self._cfg, job.input)
        async with self._http.client().post(f"{self.base}/prompt", json={
                "prompt": workflow, "client_id": client_id}) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
                raise JobFailed(500, {"detail": f"ComfyUI refused the workflow: "
                                                f"{_describe(body)}"})
        prompt_id = str(body["prompt_id"])
        state["prompt_id"] = prompt_id
        await on_log(f"ComfyUI prompt {prompt_id} queued on {self.name}", "INFO")
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue  # binary messages are previews
            event = json.loads(msg.data)
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_start":
                state["running"] = True
            elif kind == "progress":
                state["running"] = True
                await on_progress(int(data["value"]), int(data["max"]))
            elif kind == "execution_error":
                message = (f"ComfyUI node {data.get('node_type', '?')} failed: "
                           f"{data.get('exception_message', 'unknown error')}".strip())
                raise JobFailed(500, {"detail": message})
            elif kind == "execution_interrupted":
                raise JobFailed(500, {"detail": "ComfyUI interrupted the prompt"})
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                return prompt_id
        raise WorkerDown(f"ComfyUI worker {self.name} closed its websocket mid-job")

    async def _stop(self, state: dict[str, Any]) -> None:
        """Delete the prompt from ComfyUI's queue, or interrupt it if it is running."""
        prompt_id = state["prompt_id"]
        if prompt_id is None:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            limit = aiohttp.ClientTimeout(total=5)
            if state["running"]:
                async with self._http.client().post(f"{self.base}/interrupt", timeout=limit,
                                               json={"prompt_id": prompt_id}):
                    pass
            else:
                async with self._http.client().post(f"{self.base}/queue", timeout=limit,
                                               json={"delete": [prompt_id]}):
                    pass

    async def _images(self, prompt_id: str, fmt: str) -> list[dict[str, Any]]:
        async with self._http.client().get(f"{self.base}/history/{prompt_id}") as resp:
            resp.raise_for_status()
            history = await resp.json(content_type=None)
        outputs: dict[str, Any] = history[prompt_id]["outputs"]
        chosen = ([outputs[self._cfg.output_node]] if self._cfg.output_node in outputs
                  else list(outputs.values()))
        images = []
        for output in chosen:
            for ref in output.get("images", []):
                params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                          "type": ref.get("type", "output")}
                async with self._http.client().get(f"{self.base}/view", params=params) as resp:
                    resp.raise_for_status()
                    data = await resp.read()
                data, width, height, content_type = await asyncio.to_thread(_convert, data, fmt)
                images.append({"url": f"data:{content_type};base64,"
                                      f"{base64.b64encode(data).decode()}",
                               "width": width, "height": height, "content_type": content_type})
        if not images:
            raise JobFailed(500, {"detail": "ComfyUI finished without saving an image"})
        return images


def _describe(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return str(error.get("message") or error.get("type") or error)
    return str(body)[:300]
