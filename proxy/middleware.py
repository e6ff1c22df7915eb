"""Pure ASGI middleware: serves the proxy route, passes everything else through untouched."""

from __future__ import annotations

from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .mount import FalProxy
from .settings import Settings

__all__ = ["FalProxyMiddleware"]


class FalProxyMiddleware:
    """Wrap any ASGI app: requests to `settings.server.route` go to the proxy, the rest to `app`.

    The host app's own requests and responses are not read, buffered or altered; lifespan
    events pass through, and on shutdown the proxy's connection pool is closed too.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings | None = None, *, proxy: FalProxy | None = None
    ) -> None:
        if proxy is None:
            if settings is None:
                raise TypeError("FalProxyMiddleware needs settings or proxy")
            proxy = FalProxy(settings)
        self.app = app
        self.proxy = proxy
        self.route = proxy.settings.server.route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] == self.route:
            await self.proxy.handler(scope, receive, send)
            return
        if kind == "lifespan":
            proxy = self.proxy

            async def send_closing(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    await proxy.start()
                elif message["type"] == "lifespan.shutdown.complete":
                    await proxy.aclose()
                await send(message)

            await self.app(scope, receive, send_closing)
            return
        await self.app(scope, receive, send)
