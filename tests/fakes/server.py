"""Run any ASGI app (the fake fal upstream, or the proxy itself) as a real HTTP server.

The server runs uvicorn in a background thread with its own event loop, so it works from
plain sync tests *and* from async (pytest-asyncio) tests, and real clients (httpx, aiohttp,
Node's fetch) can talk to it over loopback.

    with run_server(app) as srv:
        httpx.get(f"{srv.url}/health")

    srv = ServerHandle(app).start()
    ...
    srv.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["ServerHandle", "run_server"]


class ServerHandle:
    """A uvicorn server on a background thread, bound to an ephemeral port by default.

    Attributes (valid after ``start()``): ``host``, ``port``, ``url`` (``http://host:port``).
    Extra keyword arguments are passed to ``uvicorn.Config``.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: str = "on",
        log_level: str = "warning",
        timeout_graceful_shutdown: float | None = 2.0,
        startup_timeout: float = 15.0,
        **uvicorn_kwargs: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._config_kwargs: dict[str, Any] = {
            "lifespan": lifespan,
            "log_level": log_level,
            "timeout_graceful_shutdown": timeout_graceful_shutdown,
            # keep the server from ever touching signal handlers / the main loop policy
            "loop": "asyncio",
            **uvicorn_kwargs,
        }
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ServerHandle:
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]

        config = uvicorn.Config(self.app, host=self.host, port=self.port, **self._config_kwargs)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._close_sock()
                raise RuntimeError(
                    f"server failed to start (lifespan startup error?): {self._error!r}"
                ) from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server did not start within {self.startup_timeout}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)
        self._close_sock()
        self._thread = None

    def _close_sock(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> ServerHandle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> Iterator[ServerHandle]:
    """Context manager: start ``app`` under uvicorn on a background thread, yield the handle."""
    handle = ServerHandle(app, host, port, **kwargs).start()
    try:
        yield handle
    finally:
        handle.stop()
