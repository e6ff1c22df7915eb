"""The job store seam: where queued, running and finished jobs live.

A store must make `claim_next` atomic (one job is handed to exactly one dispatcher, even with
several proxy processes) and keep jobs across restarts. `SqliteJobStore` is the embedded
default; a Redis store for several proxy instances implements the same Protocol.

To add a store: implement `JobStore` (every method async, never blocking the event loop),
then pick it in `LocalBackend.__init__` from a `[local]` setting. A store shared by several
live processes must not let `recover()` re-queue jobs another live process is running (use a
lease per claimed job instead), and should publish changes so `Hub` waiters in other
processes wake early (they re-read the store every `poll_interval` regardless).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = ["CancelOutcome", "Job", "JobStore", "LogEntry"]

JobStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
CancelOutcome = Literal["removed", "requested", "completed", "not_found"]
LogEntry = dict[str, Any]  # {"message","level","source","timestamp"}


@dataclass(slots=True)
class Job:
    """One request in the queue, as fal's status and result calls describe it."""

    id: str
    app_id: str
    endpoint_id: str
    input: dict[str, Any]
    owner: str = ""
    public_base: str = ""  # absolute URL prefix for images and files made for this job
    webhook: str = ""
    status: JobStatus = "IN_QUEUE"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    worker: str = ""
    attempts: int = 0
    cancel_requested: bool = False
    progress: dict[str, int] | None = None  # {"step": i, "total": n} while running
    result_status: int | None = None  # HTTP status of `GET result`
    result: bytes | None = None  # its JSON body
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)  # filled by `get(..., logs=True)`


class JobStore(Protocol):
    """Durable jobs. All methods are safe to call from several tasks (and processes)."""

    async def open(self) -> None:
        """Create tables/connections; idempotent."""

    async def close(self) -> None: ...

    async def enqueue(self, job: Job) -> int:
        """Store a new IN_QUEUE job; return its queue position (jobs ahead of it)."""

    async def claim_next(self, worker: str) -> Job | None:
        """Atomically move the oldest IN_QUEUE job to IN_PROGRESS on `worker`."""

    async def requeue(self, job_id: str) -> None:
        """Put a claimed job back at the head of the queue (its worker was busy)."""

    async def progress(self, job_id: str, step: int, total: int) -> None: ...

    async def append_log(self, job_id: str, entry: LogEntry) -> None: ...

    async def finish(
        self, job_id: str, result_status: int, result: bytes, *, error: str | None = None,
        error_type: str | None = None, metrics: dict[str, float] | None = None,
    ) -> bool:
        """Mark COMPLETED with the result `GET result` answers; False if already finished."""

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Queued: finished as cancelled ("removed"); running: flag set ("requested")."""

    async def get(self, job_id: str, *, logs: bool = False) -> Job | None: ...

    async def position(self, job_id: str) -> int:
        """How many queued jobs are ahead of this one."""

    async def fingerprints(self, job_ids: list[str]) -> dict[str, Hashable]:
        """Existing jobs' status, queue position, progress and log count, in one read."""

    async def depth(self) -> int:
        """How many jobs are waiting (IN_QUEUE)."""

    async def recover(self) -> int:
        """After a restart: jobs left IN_PROGRESS by a dead process go back to the queue."""

    async def purge_expired(self, older_than: float) -> int:
        """Delete jobs finished before `older_than` (epoch seconds); return how many."""
