"""The local backend: the proxy itself is fal's queue, in front of local workers.

Implements the same `forward(request)` seam as the hosted backend, driven by the parsed
target: submit/status/status-stream/result/cancel, `fal.run` (waits for the job),
`fal.stream` (progress events, then the output) and storage initiate (local files).
Dispatching starts on first use (mounted apps get no lifespan) or at `start()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ...context import ProxyRequest
from ...errors import ProxyError
from ...settings import Settings
from ...target import Operation
from ..base import UpstreamResponse
from .dispatcher import Dispatcher
from .files import FileStore
from .flux import InputError, normalize_input
from .hub import Hub
from .images import ImageStore
from .media_app import MediaApp
from .queue import SseResponse, json_response, sse_event, status_body, urls
from .settings import LocalSettings
from .store import Job, JobStore
from .watch import StatusWatch
from .webhooks import WebhookSender
from .workers import build_worker

__all__ = ["LocalBackend"]

log = logging.getLogger("flux_proxy.local")


class LocalBackend:
    """See the module docstring. `media_app` serves images and uploads at `local.path`."""

    def __init__(self, settings: Settings, store: JobStore | None = None) -> None:
        cfg = settings.local
        self.settings = cfg
        root = Path(cfg.data_dir)
        self.store: JobStore = store or _build_store(cfg)
        self.hub = Hub()
        self.watch = StatusWatch(self.store, self.settings.poll_interval)
        self.hub.listeners.append(self.watch.notify)
        self.images = ImageStore(root / "images", cfg.path)
        self.files = FileStore(root / "uploads", cfg.path, cfg.upload_max_bytes,
                               cfg.upload_quota_bytes, cfg.upload_content_types)
        self.media_app = MediaApp(self.images, self.files)
        self.webhooks = WebhookSender(cfg.webhook_hosts, cfg.webhook_attempts,
                                      cfg.webhook_timeout, cfg.webhook_backoff)
        self.worker_settings = cfg.worker_list()
        self.demo = all(w.kind == "demo" for w in self.worker_settings)
        self.dispatcher = Dispatcher(
            self.store, [build_worker(w) for w in self.worker_settings], self.hub,
            prepare=self._prepare, finalize=self._finalize, finished=self._finished,
            health_interval=cfg.health_interval, poll_interval=cfg.poll_interval,
            housekeeping=self._housekeeping,
        )
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, re-queue jobs a killed process left running, start dispatching."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            recovered = await self.store.recover()
            if recovered:
                log.info("re-queued %d job(s) left running by a previous process", recovered)
            if self.demo:
                log.warning("DEMO MODE: the demo worker draws placeholder images, not FLUX")
            await self.dispatcher.start()
            self._started = True

    async def aclose(self) -> None:
        if self._started:
            self._started = False
            await self.dispatcher.aclose()
            await self.watch.aclose()
            await self.webhooks.aclose()
            await self.store.close()

    async def queue_depth(self) -> int:
        await self.start()
        return await self.store.depth()

    async def owns(self, request_id: str) -> bool:
        """True when this request id is one of our jobs (the router asks before hosted)."""
        await self.start()
        return await self.store.get(request_id) is not None

    # --- the seam -----------------------------------------------------------------------------

    async def forward(self, request: ProxyRequest) -> UpstreamResponse:
        await self.start()
        target = request.target
        op = target.operation
        if op is Operation.SUBMIT:
            job, position = await self._submit(request)
            hint = {"status": "IN_QUEUE", **urls(job.app_id, job.id), "queue_position": position}
            return json_response(200, hint, job.id)
        if op is Operation.RUN:
            job, _ = await self._submit(request)
            try:
                done = await self._wait_done(job.id)
            except asyncio.CancelledError:  # the caller left (see Pipeline): stop the job
                await asyncio.shield(self._cancel_quietly(job.id))
                raise
            return _result(done)
        if op is Operation.STREAM:
            job, _ = await self._submit(request)
            return SseResponse(self._stream_run(job.id), job.id,
                               on_close=lambda: self._cancel_quietly(job.id))
        if op is Operation.STORAGE_INITIATE:
            owner = request.caller.id if request.caller else ""
            return json_response(200, await self.files.initiate(
                _parse_json(request), owner, self._public_base(request)))
        if op is Operation.STORAGE_INITIATE_MULTIPART:
            raise ProxyError(400, "multipart uploads (files over 90 MiB) are not supported by "
                                  "the local file store", error_type="bad_request")
        if op is Operation.TOKEN:
            raise ProxyError(403, "temporary fal tokens do not exist in local mode")
        request_id = target.request_id or ""
        if op is Operation.CANCEL:
            return await self._cancel(request_id)
        with_logs = dict(target.query).get("logs") in ("1", "true")
        found = await self.store.get(request_id, logs=with_logs and op is Operation.STATUS)
        if found is None:
            raise ProxyError(404, "Request not found")
        if op is Operation.RESULT:
            if found.status != "COMPLETED":
                raise ProxyError(400, "Request is still in progress")
            return _result(found)
        job = found
        if op is Operation.STATUS:
            position = await self.store.position(job.id) if job.status == "IN_QUEUE" else 0
            code = 200 if job.status == "COMPLETED" else 202
            return json_response(code, status_body(job, position, with_logs), job.id)
        return SseResponse(self._stream_status(job.id, with_logs), job.id)

    # --- operations ---------------------------------------------------------------------------

    async def _submit(self, request: ProxyRequest) -> tuple[Job, int]:
        target = request.target
        try:
            inp = normalize_input(_parse_json(request), self.settings.default_steps)
        except InputError as exc:
            raise ProxyError(422, exc.detail) from None
        webhook = dict(target.query).get("fal_webhook", "")
        if webhook:
            self.webhooks.check(webhook)
        if await self.store.depth() >= self.settings.max_queue:
            raise ProxyError(429, "the local queue is full, try again later",
                             error_type="runner_scheduling_failure")
        job = Job(
            id=str(uuid.uuid4()), app_id=target.app_id or "", endpoint_id=target.endpoint_id or "",
            input=inp, owner=request.caller.id if request.caller else "",
            public_base=self._public_base(request), webhook=webhook, created=time.time(),
        )
        position = await self.store.enqueue(job)
        self.hub.queue_changed.set()
        return job, position

    async def _cancel(self, request_id: str) -> UpstreamResponse:
        outcome = await self.store.cancel(request_id)
        if outcome == "not_found":
            return json_response(404, {"status": "NOT_FOUND"})
        if outcome == "completed":
            return json_response(400, {"status": "ALREADY_COMPLETED"})
        if outcome == "requested":
            self.dispatcher.cancel(request_id)
        else:  # removed from the queue: finished now
            self.hub.notify(request_id)
            await self._finished(request_id)
        return json_response(202, {"status": "CANCELLATION_REQUESTED"})

    async def _cancel_quietly(self, request_id: str) -> None:
        job = await self.store.get(request_id)
        if job is not None and job.status != "COMPLETED":
            await self._cancel(request_id)

    async def _wait_done(self, job_id: str) -> Job:
        while True:
            job = await self.store.get(job_id)
            if job is None:
                raise ProxyError(404, "Request not found")
            if job.status == "COMPLETED":
                return job
            await self.hub.wait(job_id, self.settings.poll_interval)

    async def _stream_status(self, job_id: str, with_logs: bool) -> AsyncIterator[bytes]:
        """One event per change; a comment every `keepalive_seconds`; closes after COMPLETED.

        Each event carries only the log lines not sent before: the fal client appends them.
        Between changes the stream reads nothing: `StatusWatch` tells it when to look again.
        """
        last: Any = None
        sent_logs = 0
        quiet_since = time.monotonic()
        keepalive = self.settings.keepalive_seconds
        with self.watch.watching(job_id) as watcher:
            while True:
                job = await self.store.get(job_id, logs=with_logs)
                if job is None:
                    return
                position = await self.store.position(job_id) if job.status == "IN_QUEUE" else 0
                all_logs = job.logs
                job.logs = all_logs[sent_logs:]
                body = status_body(job, position, with_logs)
                if body != last or job.logs:
                    last = body
                    sent_logs = len(all_logs)
                    quiet_since = time.monotonic()
                    yield sse_event(body)
                    if job.status == "COMPLETED":
                        return
                while not await watcher.wait(
                        max(0.0, quiet_since + keepalive - time.monotonic())):
                    quiet_since = time.monotonic()
                    yield b": ping\n\n"

    async def _stream_run(self, job_id: str) -> AsyncIterator[bytes]:
        """`fal.stream`: progress events while it runs, the output (or error) last."""
        last_step: Any = None
        quiet_since = time.monotonic()
        while True:
            job = await self.store.get(job_id)
            if job is None:
                return
            if job.status == "COMPLETED":
                yield sse_event(json.loads(job.result or b"{}") if job.error is None else
                                {"error": job.error, "error_type": job.error_type,
                                 **json.loads(job.result or b"{}")})
                return
            if job.progress and job.progress != last_step:
                last_step = job.progress
                quiet_since = time.monotonic()
                yield sse_event({"status": "IN_PROGRESS", "progress": job.progress,
                                 "message": f"step {job.progress['step']}/"
                                            f"{job.progress['total']}"})
            elif time.monotonic() - quiet_since >= self.settings.keepalive_seconds:
                quiet_since = time.monotonic()
                yield b": ping\n\n"
            await self.hub.wait(job_id, self.settings.poll_interval)

    # --- dispatcher hooks ---------------------------------------------------------------------

    def _prepare(self, job: Job) -> Job:
        """Inputs naming our own uploads reach the worker as data, not as URLs to fetch."""
        job.input = self.files.resolve(job.input, job.public_base)
        return job

    async def _finalize(self, job: Job, output: dict[str, Any]) -> dict[str, Any]:
        return await self.images.rehost(output, job.public_base,
                                        bool(job.input.get("sync_mode")))

    async def _finished(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job is not None and job.webhook:
            self.webhooks.send(job)

    async def _housekeeping(self) -> None:
        older_than = time.time() - self.settings.result_ttl_seconds
        purged = await self.store.purge_expired(older_than)
        await asyncio.to_thread(self.images.purge, older_than)
        await asyncio.to_thread(self.files.purge, older_than)
        if purged:
            log.info("purged %d expired job(s)", purged)

    def _public_base(self, request: ProxyRequest) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        scope = request.scope
        host = request.header(b"host")
        if not host:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}"


def _build_store(cfg: LocalSettings) -> JobStore:
    """SQLite in `data_dir` (one process), or Redis (several processes share the queue)."""
    # Imported here: each store pulls in its client library (redis-py is slow to import).
    if cfg.store == "redis":
        from .redis_store import RedisJobStore

        return RedisJobStore(cfg.redis_url, password=str(cfg.redis_password),
                             prefix=cfg.redis_prefix, result_ttl=cfg.result_ttl_seconds,
                             lease_seconds=cfg.lease_seconds)
    from .sqlite_store import SqliteJobStore

    return SqliteJobStore(Path(cfg.data_dir) / "jobs.sqlite3")


def _parse_json(request: ProxyRequest) -> Any:
    if request.json is not None:
        return request.json
    if not request.body:
        return {}
    try:
        return json.loads(request.body)
    except ValueError:
        raise ProxyError(400, "request body is not valid JSON") from None


def _result(job: Job) -> UpstreamResponse:
    response = json_response(job.result_status or 200, {}, job.id)
    response.body = job.result or b"{}"
    return response
