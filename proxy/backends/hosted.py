"""fal's hosted API: rebuild the upstream URL from validated parts, inject the key, forward."""

from __future__ import annotations

import json

from ..context import ProxyRequest
from ..headers import forward_request_headers
from ..settings import ConfigError, Settings
from ..target import Host
from .base import UpstreamResponse
from .transport import HttpTransport

__all__ = ["HostedBackend"]

_CLIENT_PROXY = "flux-proxy"


class HostedBackend:
    """Forwards to fal.run / queue.fal.run / rest.fal.ai (or their configured overrides)."""

    def __init__(self, settings: Settings, transport: HttpTransport | None = None) -> None:
        authorization = settings.fal.authorization()
        if not authorization:
            raise ConfigError(
                "fal.key",
                "no fal key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET) to use fal's hosted "
                "API",
            )
        self._authorization = authorization
        up = settings.upstream
        self._bases = {Host.RUN: up.run, Host.QUEUE: up.queue, Host.REST: up.rest}
        self._allowed = frozenset(h.encode() for h in up.forward_headers)
        self._transport = transport or HttpTransport(up)

    def upstream_url(self, request: ProxyRequest) -> str:
        return self._bases[request.target.host] + request.target.upstream_path()

    async def forward(self, request: ProxyRequest) -> UpstreamResponse:
        headers = forward_request_headers(request.headers, self._allowed)
        headers.update(request.upstream_headers)
        headers["authorization"] = self._authorization
        headers["x-fal-client-proxy"] = _CLIENT_PROXY
        body: bytes | None = request.body
        if request.json_dirty:
            body = json.dumps(request.json, separators=(",", ":")).encode()
        if request.method == "GET":
            body = None
        return await self._transport.send(
            request.method, self.upstream_url(request), headers, body,
            stream=request.target.streaming,
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
