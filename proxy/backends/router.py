"""Which backend answers: hosted fal, the local queue, or both with routing and overflow.

`mode = "auto"` is hosted when a fal key is configured and the local demo otherwise. In local
mode, `[[local.routes]]` send endpoint ids to "local" or "hosted" (first match wins; no match:
local), and with `overflow_depth` > 0 and a key, submits go hosted while the local queue is
that deep. Request-scoped calls (status, result, cancel) go wherever the job lives, so the
client cannot tell.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from ..context import ProxyRequest
from ..settings import ConfigError, Settings
from ..target import Operation
from .base import Backend, UpstreamResponse
from .hosted import HostedBackend

__all__ = ["RoutedBackend", "build_backend", "resolved_mode"]

_NEW_WORK = frozenset({Operation.SUBMIT, Operation.RUN, Operation.STREAM})
_STORAGE = frozenset({Operation.STORAGE_INITIATE, Operation.STORAGE_INITIATE_MULTIPART,
                      Operation.TOKEN})


def resolved_mode(settings: Settings) -> Literal["hosted", "local"]:
    mode = settings.local.mode
    if mode == "auto":
        return "hosted" if settings.fal.configured else "local"
    return mode


def serving_mode(settings: Settings) -> Literal["hosted", "local", "demo"]:
    """What users are served by: fal, local workers, or only the embedded demo worker."""
    if resolved_mode(settings) == "hosted":
        return "hosted"
    workers = settings.local.worker_list()
    return "demo" if all(w.kind == "demo" for w in workers) else "local"


class RoutedBackend:
    """The local queue, with hosted fal for routed endpoints and overflow when a key is set."""

    def __init__(self, settings: Settings, hosted: HostedBackend | None = None) -> None:
        self.hosted = hosted
        self.routes = settings.local.routes
        self.overflow_depth = settings.local.overflow_depth
        if settings.server.workers > 1 and settings.local.store != "redis":
            raise ConfigError("server.workers", "the local queue's SQLite store serves one "
                              "process; run one worker process (several need the Redis store)")
        if hosted is None and any(r.backend == "hosted" for r in self.routes):
            raise ConfigError("local.routes", "a route to hosted fal needs a fal key (FAL_KEY)")
        from .local.backend import LocalBackend  # not imported at all in hosted mode

        self.local = LocalBackend(settings)
        self.media_app = self.local.media_app

    async def start(self) -> None:
        await self.local.start()

    def _route(self, endpoint_id: str) -> Literal["local", "hosted"]:
        for route in self.routes:
            if fnmatch.fnmatchcase(endpoint_id, route.pattern):
                return route.backend
        return "local"

    async def _choose(self, request: ProxyRequest) -> Backend:
        target = request.target
        op = target.operation
        hosted = self.hosted
        if hosted is None:
            return self.local
        if op in _NEW_WORK:
            if self._route(target.endpoint_id or "") == "hosted":
                return hosted
            if (self.overflow_depth and op is Operation.SUBMIT
                    and await self.local.queue_depth() >= self.overflow_depth):
                return hosted
            return self.local
        if op in _STORAGE:
            return hosted  # files must be reachable by whichever backend runs the job
        if target.request_id and await self.local.owns(target.request_id):
            return self.local
        return hosted

    async def forward(self, request: ProxyRequest) -> UpstreamResponse:
        backend = await self._choose(request)
        request.notes["backend"] = "hosted" if backend is self.hosted else "local"
        return await backend.forward(request)

    async def aclose(self) -> None:
        await self.local.aclose()
        if self.hosted is not None:
            await self.hosted.aclose()


def build_backend(settings: Settings) -> Backend:
    """Hosted only, or the local queue (with hosted fal beside it when a key is set)."""
    if resolved_mode(settings) == "hosted":
        return HostedBackend(settings)
    hosted = HostedBackend(settings) if settings.fal.configured else None
    return RoutedBackend(settings, hosted)
