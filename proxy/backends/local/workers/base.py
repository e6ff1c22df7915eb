"""The worker seam: an adapter runs one job on one kind of worker.

To add a worker kind (ComfyUI, ...): write a class with `name`, `concurrency`,
`async run(job, on_progress, on_log, cancel) -> dict` (fal's output JSON, images as data URIs
or URLs the browser can reach), `async ready() -> bool` and `async aclose()`, and build it in
`workers.build_worker` from its `[[local.workers]]` entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..store import Job

__all__ = ["JobFailed", "OnLog", "OnProgress", "WorkerAdapter", "WorkerBusy", "WorkerDown"]

OnProgress = Callable[[int, int], Awaitable[None]]  # (step, total)
OnLog = Callable[[str, str], Awaitable[None]]  # (message, level)


class JobFailed(Exception):
    """The job itself failed: `GET result` answers `status` with `body` (fal's error shape)."""

    def __init__(self, status: int, body: dict[str, Any], error_type: str = "") -> None:
        detail = body.get("detail")
        super().__init__(detail if isinstance(detail, str) else f"failed with status {status}")
        self.status = status
        self.body = body
        self.error_type = error_type or ("validation_error" if status == 422
                                         else "runner_server_error")


class WorkerDown(Exception):
    """The worker could not be reached or broke off: the job fails, the worker is unhealthy."""


class WorkerBusy(Exception):
    """The worker refused the job for now (503 busy): the job goes back to the queue."""

    def __init__(self, retry_after: float = 1.0) -> None:
        super().__init__("worker busy")
        self.retry_after = retry_after


class WorkerAdapter(Protocol):
    name: str
    concurrency: int

    async def run(
        self, job: Job, on_progress: OnProgress, on_log: OnLog, cancel: asyncio.Event
    ) -> dict[str, Any]:
        """Run `job.input`; return fal's output JSON or raise one of the errors above.

        When `cancel` is set the adapter stops at the next step and raises
        `asyncio.CancelledError`-free `JobFailed(499, ...)`.
        """
        ...

    async def ready(self) -> bool:
        """True when the worker can take jobs (model loaded)."""
        ...

    async def aclose(self) -> None: ...


def cancelled() -> JobFailed:
    return JobFailed(499, {"detail": "the request was cancelled"}, "client_cancelled")
