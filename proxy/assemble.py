"""Builds the pipeline for a `Settings` value: which guards run, and which backend answers."""

from __future__ import annotations

from dataclasses import dataclass

from .backends.base import Backend
from .backends.hosted import HostedBackend
from .context import Caller, ProxyRequest
from .errors import ProxyError
from .limits.guard import LimitsGuard
from .limits.store import open_backing
from .metrics import Metrics, MetricsAccessLog
from .pipeline import Pipeline, Stage, Stages
from .readiness import Readiness
from .settings import Settings
from .target import Operation

__all__ = ["Services", "build_backend", "build_pipeline", "build_services", "build_stages"]


@dataclass(slots=True)
class Services:
    """What lives beside the pipeline: metrics, the limits guard and its store, readiness."""

    metrics: Metrics
    limits: LimitsGuard | None
    readiness: Readiness

    async def aclose(self) -> None:
        if self.limits is not None:
            await self.limits.backing.aclose()


def build_services(settings: Settings) -> Services:
    metrics = Metrics()
    limits = None
    if settings.limits.enabled:
        limits = LimitsGuard(settings.limits, open_backing(settings.limits),
                             on_refusal=metrics.refused, on_usage=metrics.used)
    return Services(metrics, limits, Readiness(limits.backing if limits else None))


def _charge(services: Services) -> Stage:
    """Limits (when on), then count the request as in flight."""
    track = services.metrics.track
    if services.limits is None:
        return track
    guard = services.limits.charge

    async def charge(request: ProxyRequest) -> None:
        await guard(request)
        await track(request)

    return charge


async def _identify_by_address(request: ProxyRequest) -> None:
    """Until identity is configured, the caller is its network address."""
    host = request.client_host
    request.caller = Caller(id=f"ip:{host}", kind="address", address=host)


async def _refuse_tokens(request: ProxyRequest) -> None:
    """Temporary fal tokens bypass the proxy entirely afterwards; refused unless enabled."""
    if request.target.operation is Operation.TOKEN:
        raise ProxyError(403, "temporary fal tokens (rest.fal.ai/tokens/) are disabled")


def build_stages(settings: Settings, services: Services | None = None) -> Stages:
    services = services or build_services(settings)
    return Stages(identify=_identify_by_address, authorize=_refuse_tokens,
                  charge=_charge(services))


def build_backend(settings: Settings) -> Backend:
    return HostedBackend(settings)


def build_pipeline(
    settings: Settings, backend: Backend | None = None, services: Services | None = None
) -> Pipeline:
    services = services or build_services(settings)
    return Pipeline(
        backend or build_backend(settings),
        build_stages(settings, services),
        max_body_bytes=settings.server.max_body_bytes,
        max_response_bytes=settings.server.max_response_bytes,
        access_log=MetricsAccessLog(services.metrics, settings.log.access),
    )
