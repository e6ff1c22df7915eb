"""The proxy as an ASGI app of its own, to `Mount` at a path in a Starlette or FastAPI app."""

from __future__ import annotations

from .asgi_types import ASGIApp, Receive, Scope, Send
from .assemble import Services, build_handler, build_pipeline, build_services
from .backends.base import Backend
from .pipeline import Pipeline
from .settings import Settings

__all__ = ["FalProxy"]


class FalProxy:
    """Every HTTP request it receives is a proxy request, whatever the path under its mount.

    `Mount("/api/fal/proxy", app=FalProxy(settings))`. Mounted apps get no lifespan events,
    so the connection pool opens on first use; call `aclose()` from the host's shutdown.
    `proxy.metrics_app` and `proxy.readiness_app` are ASGI apps to mount where you like
    (e.g. `/metrics`, `/readyz`).
    """

    def __init__(self, settings: Settings, *, backend: Backend | None = None) -> None:
        self.settings = settings
        self.services: Services = build_services(settings)
        self.pipeline: Pipeline = build_pipeline(settings, backend, self.services)
        self.handler: ASGIApp = build_handler(settings, self.pipeline)  # CORS, if configured
        self.metrics_app = self.services.metrics
        self.readiness_app = self.services.readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handler(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:  # websockets: nothing here speaks them
            await send({"type": "websocket.close", "code": 1008})

    @property
    def media_app(self) -> ASGIApp | None:
        """Local mode: the app serving images and uploads, to mount at `settings.local.path`."""
        media: ASGIApp | None = getattr(self.pipeline.backend, "media_app", None)
        return media

    async def start(self) -> None:
        """Start background work now (local mode: resume the queue); otherwise on first use."""
        start = getattr(self.pipeline.backend, "start", None)
        if start is not None:
            await start()

    async def aclose(self) -> None:
        """Close the upstream connection pool and the limits store (idempotent)."""
        await self.pipeline.backend.aclose()
        await self.services.aclose()
