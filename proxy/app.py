"""The standalone Starlette app: the proxy route plus health endpoints."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from .asgi_types import Receive, Scope, Send
from .backends.base import Backend
from .backends.router import serving_mode
from .demo_page import demo_routes
from .middleware import FalProxyMiddleware
from .mount import FalProxy
from .settings import Settings

__all__ = ["ProxyApp", "create_app"]


class ProxyApp(Starlette):
    """Starlette, with the proxy route answered before Starlette's own middleware stack.

    Every status poll is a proxy request: skipping the error middleware's wrapped `send` and
    the router saves a few percent of CPU per request. The pipeline answers its own errors
    (fal's JSON shape, a catch-all 500). Once you add middleware of your own
    (`add_middleware`), proxy requests go through the full stack again so that it sees them.
    """

    def __init__(self, proxy: FalProxy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._proxy_route = proxy.settings.server.route
        self._proxy_handler = proxy.handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] == self._proxy_route
                and len(self.user_middleware) == 1):
            await self._proxy_handler(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, *, backend: Backend | None = None) -> Starlette:
    """A Starlette app serving `settings.server.route`, `/healthz`, `/readyz`, `/metrics` and
    the demo page.

    The proxy route is served by `FalProxyMiddleware` in front of the router, so it costs no
    routing; add your own routes to the returned app as usual. `app.state.proxy` is the
    `FalProxy` in use.
    """
    proxy = FalProxy(settings, backend=backend)
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", proxy.readiness_app, methods=["GET"]),
        Route("/metrics", proxy.metrics_app, methods=["GET"]),
    ]
    mode = serving_mode(settings)
    show_demo = settings.demo.page if settings.demo.page != "auto" else mode == "demo"
    if show_demo:
        routes += demo_routes(settings.server.route, mode)
    if proxy.media_app is not None:  # local mode: generated images and uploaded files
        routes.append(Mount(settings.local.path, app=proxy.media_app))
    app = ProxyApp(
        proxy,
        routes=routes,
        # The middleware also closes the proxy's connection pool at lifespan shutdown.
        middleware=[Middleware(FalProxyMiddleware, proxy=proxy)],
    )
    app.state.proxy = proxy
    return app
