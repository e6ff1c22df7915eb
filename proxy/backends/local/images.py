"""Images made by local workers: kept on disk, served by the proxy, or left as data URIs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from pathlib import Path
from typing import Any

__all__ = ["ImageStore"]

_EXT = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}


class ImageStore:
    """Writes images under `root` with unguessable names; `url_for` is where they are served."""

    def __init__(self, root: Path, path: str) -> None:
        self.root = root
        self.path = path  # the URL path the media app is mounted at

    async def rehost(self, output: dict[str, Any], base: str, sync_mode: bool) -> dict[str, Any]:
        """Data-URI images become `{base}{path}/images/<name>` unless `sync_mode` asks for them."""
        images = output.get("images")
        if sync_mode or not isinstance(images, list):
            return output
        out = dict(output)
        rehosted = []
        for image in images:
            url = image.get("url", "") if isinstance(image, dict) else ""
            if not url.startswith("data:"):
                rehosted.append(image)
                continue
            head, _, payload = url.partition(",")
            content_type = head[5:].split(";")[0] or "image/jpeg"
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error:
                rehosted.append(image)
                continue
            name = f"{secrets.token_urlsafe(18)}.{_EXT.get(content_type, 'bin')}"
            await asyncio.to_thread(self._write, name, data)
            rehosted.append({**image, "url": f"{base}{self.path}/images/{name}",
                             "content_type": content_type})
        out["images"] = rehosted
        return out

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / name)

    def file(self, name: str) -> Path | None:
        if "/" in name or name.startswith(".") or not name:
            return None
        path = self.root / name
        return path if path.is_file() else None

    def purge(self, older_than: float) -> int:
        """Delete images older than `older_than` (epoch seconds)."""
        count = 0
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.stat().st_mtime < older_than:
                    path.unlink(missing_ok=True)
                    count += 1
        return count
