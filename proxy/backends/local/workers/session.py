"""The HTTP session a worker adapter talks through, and its readiness probe."""

from __future__ import annotations

import aiohttp

__all__ = ["WorkerSession"]


class WorkerSession:
    """One aiohttp session per adapter, opened on first use (inside the running loop)."""

    def __init__(self, base: str, timeout: aiohttp.ClientTimeout) -> None:
        self.base = base
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def probe(self, path: str) -> bool:
        """True when `GET {base}{path}` answers 200 within 5 s."""
        try:
            async with self.client().get(
                    f"{self.base}{path}", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
