"""The demo page: static files shipped in the package plus a `config.json` built from settings."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "demo_routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static" / "demo"


def demo_routes(proxy_route: str, mode: str, endpoint: str = "fal-ai/flux/dev") -> list[BaseRoute]:
    """Routes serving the page under `/demo/`, with `/` and `/demo` redirecting to it."""
    config = {
        "proxyUrl": proxy_route,
        "endpoint": endpoint,
        "mode": mode,
        "title": "flux-proxy demo" if mode == "demo" else "flux-proxy",
    }

    async def config_json(request: Request) -> Response:
        return JSONResponse(config, headers={"cache-control": "no-store"})

    async def to_demo(request: Request) -> Response:
        return RedirectResponse("/demo/", status_code=307)

    return [
        Route("/", to_demo, methods=["GET"]),
        Route("/demo", to_demo, methods=["GET"]),
        Route("/demo/config.json", config_json, methods=["GET"]),
        Mount("/demo", app=StaticFiles(directory=STATIC_DIR, html=True), name="demo"),
    ]
