"""The embedded job store: one SQLite file, written from a worker thread.

WAL journal: a SIGKILL loses nothing that was committed. Every call runs in a thread
(`asyncio.to_thread`) behind one lock, so the event loop never waits on the disk.
`claim_next` is one `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`, so it is atomic even if
two processes share the file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from .store import CancelOutcome, Job, LogEntry

__all__ = ["SqliteJobStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE NOT NULL,
  app_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, input TEXT NOT NULL,
  owner TEXT NOT NULL, public_base TEXT NOT NULL, webhook TEXT NOT NULL,
  status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
  worker TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0, progress TEXT,
  result_status INTEGER, result BLOB, error TEXT, error_type TEXT, metrics TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
CREATE TABLE IF NOT EXISTS logs (
  job_id TEXT NOT NULL, n INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, n);
"""

_COLUMNS = ("id, app_id, endpoint_id, input, owner, public_base, webhook, status, created, "
            "started, finished, worker, attempts, cancel_requested, progress, result_status, "
            "result, error, error_type, metrics")


def _row_to_job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0], app_id=row[1], endpoint_id=row[2], input=json.loads(row[3]), owner=row[4],
        public_base=row[5], webhook=row[6], status=row[7], created=row[8], started=row[9],
        finished=row[10], worker=row[11], attempts=row[12], cancel_requested=bool(row[13]),
        progress=json.loads(row[14]) if row[14] else None, result_status=row[15],
        result=row[16], error=row[17], error_type=row[18],
        metrics=json.loads(row[19]) if row[19] else {},
    )


class SqliteJobStore:
    """`JobStore` on a SQLite file (`path`); see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                db = self._db
                if db is None:
                    raise RuntimeError("job store is closed")
                return fn(db)

        return await asyncio.to_thread(call)

    async def open(self) -> None:
        if self._db is not None:
            return

        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db

        self._db = await asyncio.to_thread(connect)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with self._lock:
                db.close()

    async def enqueue(self, job: Job) -> int:
        def do(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO jobs (id, app_id, endpoint_id, input, owner, public_base, "
                    "webhook, status, created) VALUES (?,?,?,?,?,?,?,'IN_QUEUE',?)",
                    (job.id, job.app_id, job.endpoint_id, json.dumps(job.input), job.owner,
                     job.public_base, job.webhook, job.created or time.time()),
                )
                (ahead,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status='IN_QUEUE' AND seq < ?",
                    (cur.lastrowid,),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(ahead)

        return await self._run(do)

    async def claim_next(self, worker: str) -> Job | None:
        def do(db: sqlite3.Connection) -> Job | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "UPDATE jobs SET status='IN_PROGRESS', worker=?, started=?, "
                    "attempts=attempts+1 WHERE seq = (SELECT seq FROM jobs WHERE "
                    f"status='IN_QUEUE' ORDER BY seq LIMIT 1) RETURNING {_COLUMNS}",
                    (worker, time.time()),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return _row_to_job(row) if row else None

        return await self._run(do)

    async def requeue(self, job_id: str) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE jobs SET status='IN_QUEUE', worker='', started=NULL, progress=NULL, "
            "attempts=MAX(attempts-1, 0) WHERE id=? AND status='IN_PROGRESS'", (job_id,)))

    async def progress(self, job_id: str, step: int, total: int) -> None:
        value = json.dumps({"step": step, "total": total})
        await self._run(lambda db: db.execute(
            "UPDATE jobs SET progress=? WHERE id=?", (value, job_id)))

    async def append_log(self, job_id: str, entry: LogEntry) -> None:
        value = json.dumps(entry)
        await self._run(lambda db: db.execute(
            "INSERT INTO logs (job_id, entry) VALUES (?, ?)", (job_id, value)))

    async def finish(
        self, job_id: str, result_status: int, result: bytes, *, error: str | None = None,
        error_type: str | None = None, metrics: dict[str, float] | None = None,
    ) -> bool:
        def do(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE jobs SET status='COMPLETED', finished=?, result_status=?, result=?, "
                "error=?, error_type=?, metrics=?, progress=NULL "
                "WHERE id=? AND status!='COMPLETED'",
                (time.time(), result_status, result, error, error_type,
                 json.dumps(metrics or {}), job_id),
            )
            return cur.rowcount == 1

        return await self._run(do)

    async def cancel(self, job_id: str) -> CancelOutcome:
        def do(db: sqlite3.Connection) -> CancelOutcome:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
                outcome: CancelOutcome
                if row is None:
                    outcome = "not_found"
                elif row[0] == "COMPLETED":
                    outcome = "completed"
                elif row[0] == "IN_QUEUE":
                    body = json.dumps({"detail": "the request was cancelled before it started"})
                    db.execute(
                        "UPDATE jobs SET status='COMPLETED', finished=?, result_status=499, "
                        "result=?, error=?, error_type='client_cancelled', cancel_requested=1 "
                        "WHERE id=?",
                        (time.time(), body.encode(), "cancelled before it started", job_id),
                    )
                    outcome = "removed"
                else:
                    db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
                    outcome = "requested"
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return outcome

        return await self._run(do)

    async def get(self, job_id: str, *, logs: bool = False) -> Job | None:
        def do(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _row_to_job(row)
            if logs:
                job.logs = [json.loads(r[0]) for r in db.execute(
                    "SELECT entry FROM logs WHERE job_id=? ORDER BY n", (job_id,))]
            return job

        return await self._run(do)

    async def position(self, job_id: str) -> int:
        def do(db: sqlite3.Connection) -> int:
            (ahead,) = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status='IN_QUEUE' AND seq < "
                "(SELECT seq FROM jobs WHERE id=?)", (job_id,)).fetchone()
            return int(ahead)

        return await self._run(do)

    async def fingerprints(self, job_ids: list[str]) -> dict[str, Hashable]:
        def do(db: sqlite3.Connection) -> dict[str, Hashable]:
            ahead = {row[0]: i for i, row in enumerate(db.execute(
                "SELECT id FROM jobs WHERE status='IN_QUEUE' ORDER BY seq"))}
            rows = db.execute(
                "SELECT id, status, progress, (SELECT COUNT(*) FROM logs WHERE job_id=jobs.id) "
                "FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(job_ids),))
            return {r[0]: (r[1], ahead.get(r[0], 0), r[2], r[3]) for r in rows}

        return await self._run(do)

    async def depth(self) -> int:
        def do(db: sqlite3.Connection) -> int:
            (n,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status='IN_QUEUE'").fetchone()
            return int(n)

        return await self._run(do)

    async def recover(self) -> int:
        def do(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE jobs SET status='IN_QUEUE', worker='', started=NULL, progress=NULL "
                "WHERE status='IN_PROGRESS'")
            return cur.rowcount

        return await self._run(do)

    async def purge_expired(self, older_than: float) -> int:
        def do(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM logs WHERE job_id IN (SELECT id FROM jobs WHERE "
                    "status='COMPLETED' AND finished < ?)", (older_than,))
                cur = db.execute(
                    "DELETE FROM jobs WHERE status='COMPLETED' AND finished < ?", (older_than,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return cur.rowcount

        return await self._run(do)
