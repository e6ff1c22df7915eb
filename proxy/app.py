"""The standalone Starlette app: the proxy route plus health endpoints."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .backends.base import Backend
from .middleware import FalProxyMiddleware
from .mount import FalProxy
from .settings import Settings

__all__ = ["create_app"]


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, *, backend: Backend | None = None) -> Starlette:
    """A Starlette app serving `settings.server.route`, `/healthz`, `/readyz` and `/metrics`.

    The proxy route is served by `FalProxyMiddleware` in front of the router, so it costs no
    routing; add your own routes to the returned app as usual. `app.state.proxy` is the
    `FalProxy` in use.
    """
    proxy = FalProxy(settings, backend=backend)
    app = Starlette(
        routes=[
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", proxy.readiness_app, methods=["GET"]),
            Route("/metrics", proxy.metrics_app, methods=["GET"]),
        ],
        # The middleware also closes the proxy's connection pool at lifespan shutdown.
        middleware=[Middleware(FalProxyMiddleware, proxy=proxy)],
    )
    app.state.proxy = proxy
    return app
