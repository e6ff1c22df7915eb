"""The ASGI app for `{local.path}`: GET images and files, PUT uploads (no proxy route)."""

from __future__ import annotations

import asyncio

from ...asgi_types import Receive, Scope, Send
from ...errors import ProxyError
from .files import FileStore
from .images import ImageStore

__all__ = ["MediaApp"]

_IMAGE_TYPES = {".png": b"image/png", ".jpeg": b"image/jpeg", ".webp": b"image/webp"}
_CORS = [(b"access-control-allow-origin", b"*"),
         (b"access-control-allow-methods", b"GET, PUT, OPTIONS"),
         (b"access-control-allow-headers", b"content-type")]


class MediaApp:
    """Mount at `settings.local.path` (the standalone app does it for you)."""

    def __init__(self, images: ImageStore, files: FileStore) -> None:
        self.images = images
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # under a Starlette Mount, `path` is still the full path; strip our prefix
        path: str = scope["path"]
        prefix = self.images.path
        if path.startswith(prefix):
            path = path[len(prefix):]
        parts = path.strip("/").split("/")
        method = scope["method"]
        try:
            if method == "OPTIONS":
                await _send(send, 204, b"", b"text/plain")
            elif method == "GET" and len(parts) == 2 and parts[0] == "images":
                found = self.images.file(parts[1])
                if found is None:
                    raise ProxyError(404, "image not found (expired?)")
                kind = _IMAGE_TYPES.get(found.suffix, b"application/octet-stream")
                await _send(send, 200, await asyncio.to_thread(found.read_bytes), kind,
                            cache=True)
            elif method == "GET" and len(parts) == 3 and parts[0] == "files":
                hit = self.files.file(parts[1], parts[2])
                if hit is None:
                    raise ProxyError(404, "file not found (expired?)")
                data = await asyncio.to_thread(hit[0].read_bytes)
                await _send(send, 200, data, hit[1].encode(), cache=True)
            elif method == "PUT" and len(parts) == 2 and parts[0] == "upload":
                # Check the token before reading: an unknown URL must not make us buffer
                # megabytes (this route has no identity or limits of its own).
                if await asyncio.to_thread(self.files.pending, parts[1]) is None:
                    raise ProxyError(404, "unknown or expired upload URL")
                data = await _read(receive, self.files.max_bytes)
                content_type = ""
                for name, value in scope["headers"]:
                    if name == b"content-type":
                        content_type = value.decode("latin-1")
                await self.files.store(parts[1], content_type or "application/octet-stream", data)
                await _send(send, 200, b"{}", b"application/json")
            else:
                raise ProxyError(404, "not found")
        except ProxyError as exc:
            await _send(send, exc.status, exc.body(), b"application/json")


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProxyError(400, "upload interrupted")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProxyError(413, f"file is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: bytes,
                cache: bool = False) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff"), *_CORS]
    if cache:
        headers.append((b"cache-control", b"private, max-age=3600"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
