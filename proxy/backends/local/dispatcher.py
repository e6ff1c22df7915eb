"""Takes queued jobs from the store and runs each on the least busy healthy worker.

Each worker has a concurrency cap and a health flag (its readiness check, re-run every
`health_interval`). A worker that cannot be reached fails the job it had with a clear error
and is marked unhealthy until a readiness check passes again; a busy worker (503) gets the job
back into the queue and a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .hub import Hub
from .store import Job, JobStore
from .workers.base import JobFailed, WorkerAdapter, WorkerBusy, WorkerDown, cancelled

__all__ = ["Dispatcher", "WorkerState", "log_entry"]

log = logging.getLogger("flux_proxy.local")
_RETRIED = frozenset({429, 502, 503, 504})

Prepare = Callable[[Job], Job]
Finalize = Callable[[Job, dict[str, Any]], Awaitable[dict[str, Any]]]
Finished = Callable[[str], Awaitable[None]]


def log_entry(message: str, level: str = "INFO") -> dict[str, Any]:
    """A log line in fal's status shape."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"message": message, "level": level, "source": "USER", "timestamp": now}


@dataclass(slots=True)
class WorkerState:
    adapter: WorkerAdapter
    active: int = 0
    healthy: bool = False
    paused_until: float = 0.0

    @property
    def name(self) -> str:
        return self.adapter.name

    def free(self, now: float) -> bool:
        return self.healthy and self.active < self.adapter.concurrency and now >= self.paused_until


class Dispatcher:
    """Start with `start()`, stop with `aclose()`; `cancel(job_id)` stops a job running here."""

    def __init__(
        self, store: JobStore, workers: list[WorkerAdapter], hub: Hub, *,
        prepare: Prepare, finalize: Finalize, finished: Finished,
        health_interval: float, poll_interval: float,
        housekeeping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.workers = [WorkerState(w) for w in workers]
        self.hub = hub
        self._prepare = prepare
        self._finalize = finalize
        self._finished = finished
        self._health_interval = health_interval
        self._poll = poll_interval
        self._housekeeping = housekeeping
        self._slot = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._check_health()
        self._loops = [asyncio.ensure_future(self._dispatch_loop()),
                       asyncio.ensure_future(self._health_loop())]

    async def aclose(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        self._loops = []
        for state in self.workers:
            await state.adapter.aclose()

    def cancel(self, job_id: str) -> bool:
        event = self._cancels.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def _pick(self) -> WorkerState | None:
        now = time.monotonic()
        free = [s for s in self.workers if s.free(now)]
        if not free:
            return None
        return min(free, key=lambda s: s.active / s.adapter.concurrency)

    async def _dispatch_loop(self) -> None:
        while True:
            state = self._pick()
            if state is None:
                self._slot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot.wait(), self._poll)
                continue
            try:
                job = await self.store.claim_next(state.name)
            except Exception:  # a store hiccup must not stop dispatching
                log.exception("claiming a job failed")
                await asyncio.sleep(self._poll)
                continue
            if job is None:
                self.hub.queue_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hub.queue_changed.wait(), self._poll)
                continue
            state.active += 1
            task = asyncio.ensure_future(self._run(state, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _health_loop(self) -> None:
        last_housekeeping = 0.0
        while True:
            await asyncio.sleep(self._health_interval)
            await self._check_health()
            if self._housekeeping and time.monotonic() - last_housekeeping > 60:
                last_housekeeping = time.monotonic()
                try:
                    await self._housekeeping()
                except Exception:
                    log.exception("housekeeping failed")

    async def _check_health(self) -> None:
        results = await asyncio.gather(*(s.adapter.ready() for s in self.workers),
                                       return_exceptions=True)
        for state, ready in zip(self.workers, results, strict=True):
            healthy = ready is True
            if healthy != state.healthy:
                log.info("worker %s is %s", state.name, "ready" if healthy else "not ready")
            state.healthy = healthy
        self._slot.set()

    async def _run(self, state: WorkerState, job: Job) -> None:
        store, hub = self.store, self.hub
        cancel = self._cancels.setdefault(job.id, asyncio.Event())
        if job.cancel_requested:
            cancel.set()
        hub.notify(job.id)
        started = time.perf_counter()

        async def on_progress(step: int, total: int) -> None:
            await store.progress(job.id, step, total)
            await store.append_log(job.id, log_entry(f"step {step}/{total}"))
            hub.notify(job.id)

        async def on_log(message: str, level: str) -> None:
            await store.append_log(job.id, log_entry(message, level))
            hub.notify(job.id)

        watcher = asyncio.ensure_future(self._watch_cancel(job.id, cancel))
        try:
            if cancel.is_set():  # cancelled while its previous process was running it
                raise cancelled()
            await store.append_log(job.id, log_entry(f"running on worker {state.name}"))
            output = await state.adapter.run(self._prepare(job), on_progress, on_log, cancel)
            output = await self._finalize(job, output)
            elapsed = time.perf_counter() - started
            await store.finish(job.id, 200, json.dumps(output, separators=(",", ":")).encode(),
                               metrics={"inference_time": round(elapsed, 4)})
        except WorkerBusy as busy:
            state.paused_until = time.monotonic() + busy.retry_after
            await store.requeue(job.id)
            hub.queue_changed.set()
            return
        except JobFailed as failed:
            await self._fail(job, failed.status, failed.body, str(failed), failed.error_type)
        except WorkerDown as down:
            state.healthy = False
            log.warning("worker %s is down: %s", state.name, down)
            await self._fail(job, 500, {"detail": str(down)}, str(down),
                             "runner_connection_error")
        except asyncio.CancelledError:
            raise  # shutting down: the job stays IN_PROGRESS and is re-run after restart
        except Exception as exc:
            log.exception("job %s failed on worker %s", job.id, state.name)
            message = f"internal error while running the job: {exc.__class__.__name__}"
            await self._fail(job, 500, {"detail": message}, message, "internal_error")
        finally:
            watcher.cancel()
            state.active -= 1
            self._cancels.pop(job.id, None)
            self._slot.set()
            hub.notify(job.id)
        await self._finished(job.id)

    async def _fail(self, job: Job, status: int, body: dict[str, Any], error: str,
                    error_type: str) -> None:
        # The fal client retries these statuses on `result` and `run` (§3.9); a finished job's
        # outcome will not change, so answer 500 with the worker's body instead.
        if status in _RETRIED:
            status = 500
        await self.store.append_log(job.id, log_entry(error, "ERROR"))
        await self.store.finish(job.id, status, json.dumps(body).encode(), error=error,
                                error_type=error_type)

    async def _watch_cancel(self, job_id: str, cancel: asyncio.Event) -> None:
        """Cancels requested through another process reach us through the store."""
        while not cancel.is_set():
            await asyncio.sleep(self._poll)
            job = await self.store.get(job_id)
            if job is None or job.cancel_requested:
                cancel.set()
