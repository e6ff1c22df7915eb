"""The standalone Starlette app: the proxy route plus health endpoints."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from .backends.base import Backend
from .backends.router import serving_mode
from .demo_page import demo_routes
from .middleware import FalProxyMiddleware
from .mount import FalProxy
from .settings import Settings

__all__ = ["create_app"]


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
    app = Starlette(
        routes=routes,
        # The middleware also closes the proxy's connection pool at lifespan shutdown.
        middleware=[Middleware(FalProxyMiddleware, proxy=proxy)],
    )
    app.state.proxy = proxy
    return app
