"""Builds the pipeline for a `Settings` value: which guards run, and which backend answers."""

from __future__ import annotations

from .backends.base import Backend
from .context import Caller, ProxyRequest
from .errors import ProxyError
from .observability import AccessLog
from .pipeline import Pipeline, Stages
from .settings import Settings
from .target import Operation

__all__ = ["build_backend", "build_pipeline", "build_stages"]


async def _identify_by_address(request: ProxyRequest) -> None:
    """Until identity is configured, the caller is its network address."""
    host = request.client_host
    request.caller = Caller(id=f"ip:{host}", kind="address", address=host)


async def _refuse_tokens(request: ProxyRequest) -> None:
    """Temporary fal tokens bypass the proxy entirely afterwards; refused unless enabled."""
    if request.target.operation is Operation.TOKEN:
        raise ProxyError(403, "temporary fal tokens (rest.fal.ai/tokens/) are disabled")


def build_stages(settings: Settings) -> Stages:
    return Stages(identify=_identify_by_address, authorize=_refuse_tokens)


def build_backend(settings: Settings) -> Backend:
    from .backends.router import build_backend as routed  # hosted, local queue, or both

    return routed(settings)


def build_pipeline(settings: Settings, backend: Backend | None = None) -> Pipeline:
    return Pipeline(
        backend or build_backend(settings),
        build_stages(settings),
        max_body_bytes=settings.server.max_body_bytes,
        max_response_bytes=settings.server.max_response_bytes,
        access_log=AccessLog(settings.log.access),
    )
