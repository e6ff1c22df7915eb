"""The access log: one structured line per proxied request, never a key or credential."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import time
from typing import TextIO

from .asgi_types import Scope
from .context import Outcome, ProxyRequest

__all__ = ["ACCESS_LOGGER", "AccessLog", "LineBatcher"]

ACCESS_LOGGER = "flux_proxy.access"


# Writes up to this size reach a pipe whole (POSIX PIPE_BUF): several worker processes sharing
# one stderr pipe then never interleave inside a line.
_ATOMIC_WRITE = getattr(select, "PIPE_BUF", 512)


class LineBatcher:
    """Writes lines to a stream once per event-loop turn: under load a few writes carry every
    line of the turn, and an idle server writes each line in the turn it was made. Lines are
    ASCII (the access log escapes the rest); each write holds whole lines, at most
    `_ATOMIC_WRITE` bytes of them unless one line alone is longer."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # where a flush is due

    def add(self, line: str) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: now
            self.flush()
            return
        if self._scheduled is not loop:  # the turn's first line: write all when it ends
            # (by loop, not by "lines were waiting": a loop that stopped before its flush
            # ran must not keep the next loop's lines waiting forever)
            self._scheduled = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = None
        lines, self._lines = self._lines, []
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) + 1 > _ATOMIC_WRITE:
                    self._write(chunk)
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line) + 1
            if chunk:
                self._write(chunk)
        except (OSError, ValueError):  # a closed or broken stream: drop, as logging would
            pass

    def _write(self, lines: list[str]) -> None:
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()


class AccessLog:
    """Writes `{"op", "endpoint", "status", "ms", "upstream_ms", ...}` as one JSON line.

    Only ids the proxy derived (operation, endpoint, caller id) are logged: never headers,
    bodies, tokens or the fal key.
    """

    def __init__(self, enabled: bool = True, logger: logging.Logger | None = None,
                 stream: TextIO | None = None) -> None:
        """`stream`: write lines there (batched per event-loop turn, prefixed with the
        logger's name) instead of through the logging module; the logger's level still
        decides whether they are written."""
        self._enabled = enabled
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._batch = LineBatcher(stream) if stream is not None else None
        self._prefix = self._logger.name + " "  # as `flux-proxy serve`'s log format has it

    def record(
        self, scope: Scope, request: ProxyRequest | None, outcome: Outcome,
        started: float,
    ) -> None:
        if not self._enabled or not self._logger.isEnabledFor(logging.INFO):
            return
        # Built by hand: this runs on every status poll and json.dumps of a dict costs more
        # than the fields need. Method, operation and endpoint are validated ASCII tokens
        # (target.py); only the caller id is free text and goes through json.dumps.
        ms = (time.perf_counter() - started) * 1000
        if request is None:
            line = (f'{{"method":"{scope.get("method")}","op":null,"endpoint":null,'
                    f'"status":{outcome.status},"ms":{ms:.2f},"upstream_ms":null')
        else:
            target = request.target
            endpoint = target.endpoint_id or target.app_id or target.path
            upstream = "null" if request.upstream_ms is None else f"{request.upstream_ms:.2f}"
            line = (f'{{"method":"{request.method}","op":"{target.operation.value}",'
                    f'"endpoint":"{endpoint}","status":{outcome.status},"ms":{ms:.2f},'
                    f'"upstream_ms":{upstream}')
            if request.caller is not None:
                line += f',"caller":{json.dumps(request.caller.id)}'
        if outcome.upstream_status is not None:
            line += f',"upstream_status":{outcome.upstream_status}'
        if outcome.error:
            line += f',"error":"{outcome.error}"'
        if outcome.streamed:
            line += ',"streamed":true'
        if self._batch is not None:
            self._batch.add(self._prefix + line + "}")
        else:
            self._logger.info(line + "}")
