"""A Redis client that sends every command issued in one event-loop turn as one pipeline.

Under load many requests touch Redis in the same turn; one write and one read for all of them
costs far less CPU than a round trip each (syscalls, wake-ups), which is what Redis-backed
limits spend their time on. Each caller still awaits its own reply (or its own error), so
`limits`' scripts and our own commands use it as an ordinary client. Not for transactions or
blocking commands (nothing here uses them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from redis.asyncio import ConnectionPool, Redis

__all__ = ["BatchingRedis", "TurnBatch", "fail_all", "settle_all"]

_Item = TypeVar("_Item")
Pending = tuple[_Item, "asyncio.Future[Any]"]


class TurnBatch(Generic[_Item]):
    """Items submitted in one event-loop turn, handed to `send` together.

    Each submitter awaits its own future; `send` gets at most `most` (item, future) pairs per
    call (0: no bound) and must settle every future (`settle_all`, `fail_all`).
    """

    def __init__(self, send: Callable[[list[Pending[_Item]]], Awaitable[None]],
                 most: int = 0) -> None:
        self._send = send
        self._most = most
        self._pending: list[Pending[_Item]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: _Item) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        step = self._most or len(pending)
        for start in range(0, len(pending), step):
            task = asyncio.ensure_future(self._send(pending[start: start + step]))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)


def settle_all(futures: Iterable[asyncio.Future[Any]], replies: Iterable[Any]) -> None:
    """Each caller its own reply; a reply that is an exception is raised to its caller."""
    for future, reply in zip(futures, replies, strict=True):
        if future.done():
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def fail_all(futures: Iterable[asyncio.Future[Any]], exc: BaseException) -> None:
    """The whole call failed: every caller gets the error (cancelled, if it was cancelled)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, Exception):
            future.set_exception(exc)
        else:  # cancelled (shutdown): so are the callers
            future.cancel()


class BatchingRedis(Redis):
    """`redis.asyncio.Redis` whose commands are coalesced per loop turn (see module doc)."""

    def __init__(self, connection_pool: ConnectionPool) -> None:
        super().__init__(connection_pool=connection_pool)
        self._batch: TurnBatch[tuple[tuple[Any, ...], dict[str, Any]]] = TurnBatch(self._send)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await self._batch.submit((args, options))

    async def _send(self, batch: list[Pending[tuple[tuple[Any, ...], dict[str, Any]]]]) -> None:
        pipe = self.pipeline(transaction=False)
        for (args, options), _ in batch:
            pipe.execute_command(*args, **options)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # connection trouble: every caller gets the error
            fail_all((future for _, future in batch), exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        settle_all((future for _, future in batch), replies)
