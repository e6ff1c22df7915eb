"""A Redis client that sends every command issued in one event-loop turn as one pipeline.

Under load many requests touch Redis in the same turn; one write and one read for all of them
costs far less CPU than a round trip each (syscalls, wake-ups), which is what Redis-backed
limits spend their time on. Each caller still awaits its own reply (or its own error), so
`limits`' scripts and our own commands use it as an ordinary client. Not for transactions or
blocking commands (nothing here uses them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool, Redis

__all__ = ["BatchingRedis"]

_Queued = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class BatchingRedis(Redis):
    """`redis.asyncio.Redis` whose commands are coalesced per loop turn (see module doc)."""

    def __init__(self, connection_pool: ConnectionPool) -> None:
        super().__init__(connection_pool=connection_pool)
        self._queued: list[_Queued] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((args, options, future))
        return await future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        pipe = self.pipeline(transaction=False)
        for args, options, _ in batch:
            pipe.execute_command(*args, **options)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # connection trouble: every caller gets the error
            for _, _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:  # cancelled (shutdown): so are the callers
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
