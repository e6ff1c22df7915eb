"""flux-proxy: a secure, fast server-side proxy for fal's JavaScript client.

Three ways to use it:

- ``create_app(settings)``: a standalone Starlette app (proxy route + ``/healthz``);
- ``FalProxy(settings)``: an ASGI app to ``Mount`` in an existing Starlette/FastAPI app;
- ``FalProxyMiddleware(app, settings)``: pure ASGI middleware serving the proxy route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FalProxy",
    "FalProxyMiddleware",
    "Settings",
    "__version__",
    "create_app",
    "load_settings",
    "settings_from_dict",
]

if TYPE_CHECKING:
    from .app import create_app
    from .middleware import FalProxyMiddleware
    from .mount import FalProxy
    from .settings import ConfigError, Settings, load_settings, settings_from_dict

_LAZY = {
    "create_app": "app",
    "FalProxyMiddleware": "middleware",
    "FalProxy": "mount",
    "ConfigError": "settings",
    "Settings": "settings",
    "load_settings": "settings",
    "settings_from_dict": "settings",
}


def __getattr__(name: str) -> Any:
    """Import lazily, so `import proxy` stays cheap (cold start, worker processes)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
