"""`fal.storage.upload` with no fal account: the proxy is the storage.

Initiate (through the proxy route) reserves an unguessable upload token for the caller; the
client PUTs the bytes straight to `{base}{path}/upload/<token>` (size cap, declared content
type, per-caller quota), and they are served at `{base}{path}/files/<id>/<name>`. Job input
URLs that point here are turned into data URIs for the workers, with no network round trip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from ...errors import ProxyError

__all__ = ["FileStore"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_PENDING_SECONDS = 600


def _safe_name(name: Any) -> str:
    cleaned = _SAFE_NAME.sub("_", str(name or "file"))[-80:].lstrip(".")
    return cleaned or "file"


class FileStore:
    """Uploaded files under `root`: `pending/` reservations, `files/<id>/` contents + meta."""

    def __init__(self, root: Path, path: str, max_bytes: int, quota_bytes: int,
                 content_types: tuple[str, ...]) -> None:
        self.root = root
        self.path = path
        self.max_bytes = max_bytes
        self.quota_bytes = quota_bytes
        self.content_types = frozenset(content_types)
        self._usage: dict[str, int] | None = None
        self._lock = asyncio.Lock()

    # --- initiate (proxy route) ---------------------------------------------------------

    async def initiate(self, body: Any, owner: str, base: str) -> dict[str, str]:
        if not isinstance(body, dict):
            raise ProxyError(422, "storage initiate body must be a JSON object")
        content_type = str(body.get("content_type") or "application/octet-stream")
        content_type = content_type.split(";")[0].strip().lower()
        if content_type not in self.content_types:
            raise ProxyError(415, f"content type {content_type[:60]!r} is not accepted for "
                                  "uploads", error_type="bad_request")
        usage = await self._usage_of(owner)
        if usage >= self.quota_bytes:
            raise ProxyError(413, "upload quota used up; files expire after the result TTL",
                             error_type="quota_exceeded")
        token, file_id = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        name = _safe_name(body.get("file_name"))
        meta = {"owner": owner, "content_type": content_type, "file_id": file_id,
                "name": name, "expires": time.time() + _PENDING_SECONDS}
        await asyncio.to_thread(self._write_json, self.root / "pending" / f"{token}.json", meta)
        return {"upload_url": f"{base}{self.path}/upload/{token}",
                "file_url": f"{base}{self.path}/files/{file_id}/{name}"}

    # --- the direct PUT --------------------------------------------------------------------

    def pending(self, token: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", token):
            return None
        path = self.root / "pending" / f"{token}.json"
        try:
            meta: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return meta if meta.get("expires", 0) > time.time() else None

    async def store(self, token: str, content_type: str, data: bytes) -> None:
        """Keep the bytes of a reserved upload; raises `ProxyError` when it breaks a rule."""
        meta = await asyncio.to_thread(self.pending, token)
        if meta is None:
            raise ProxyError(404, "unknown or expired upload URL")
        if content_type.split(";")[0].strip().lower() != meta["content_type"]:
            raise ProxyError(415, "content type differs from the one declared at initiate")
        if len(data) > self.max_bytes:
            raise ProxyError(413, f"file is larger than {self.max_bytes} bytes")
        async with self._lock:
            usage = await self._usage_of(meta["owner"])
            if usage + len(data) > self.quota_bytes:
                raise ProxyError(413, "upload quota exceeded", error_type="quota_exceeded")
            await asyncio.to_thread(self._commit, token, meta, data)
            if self._usage is not None:  # None: a purge reset it; the next scan counts this
                self._usage[meta["owner"]] = usage + len(data)

    def _commit(self, token: str, meta: dict[str, Any], data: bytes) -> None:
        folder = self.root / "files" / meta["file_id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / meta["name"]).write_bytes(data)
        self._write_json(folder / ".meta.json", {**meta, "size": len(data)})
        (self.root / "pending" / f"{token}.json").unlink(missing_ok=True)

    @staticmethod
    def _write_json(path: Path, value: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    async def _usage_of(self, owner: str) -> int:
        if self._usage is None:
            self._usage = await asyncio.to_thread(self._scan_usage)
        return self._usage.get(owner, 0)

    def _scan_usage(self) -> dict[str, int]:
        usage: dict[str, int] = {}
        for meta_path in (self.root / "files").glob("*/.meta.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            usage[meta["owner"]] = usage.get(meta["owner"], 0) + int(meta.get("size", 0))
        return usage

    # --- serving and local resolution --------------------------------------------------------

    def file(self, file_id: str, name: str) -> tuple[Path, str] | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", file_id) or name != _safe_name(name):
            return None
        folder = self.root / "files" / file_id
        try:
            meta = json.loads((folder / ".meta.json").read_text())
        except (OSError, ValueError):
            return None
        path = folder / name
        return (path, str(meta["content_type"])) if meta.get("name") == name else None

    def resolve(self, value: Any, base: str) -> Any:
        """Input with every URL of one of our files replaced by a data URI (recursively)."""
        prefix = f"{base}{self.path}/files/"
        if isinstance(value, str) and base and value.startswith(prefix):
            file_id, _, name = value[len(prefix):].partition("/")
            found = self.file(file_id, name)
            if found is not None:
                data = base64.b64encode(found[0].read_bytes()).decode()
                return f"data:{found[1]};base64,{data}"
            return value
        if isinstance(value, dict):
            return {k: self.resolve(v, base) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, base) for v in value]
        return value

    def purge(self, older_than: float) -> int:
        count = 0
        for meta_path in (self.root / "files").glob("*/.meta.json"):
            if meta_path.stat().st_mtime < older_than:
                for path in meta_path.parent.iterdir():
                    path.unlink(missing_ok=True)
                meta_path.parent.rmdir()
                count += 1
        now = time.time()
        for pending in (self.root / "pending").glob("*.json"):  # reservations never used
            try:
                expired = json.loads(pending.read_text()).get("expires", 0) <= now
            except (OSError, ValueError):
                expired = True
            if expired:
                pending.unlink(missing_ok=True)
        if count:
            self._usage = None  # recounted from disk on next use
        return count
