"""Builds the pipeline for a `Settings` value: which guards run, and which backend answers."""

from __future__ import annotations

import dataclasses
import secrets as _random
import sys
from collections.abc import Awaitable
from dataclasses import dataclass

from .asgi_types import ASGIApp
from .backends.base import Backend
from .backends.router import serving_mode
from .context import ProxyRequest
from .identity import build_identify
from .identity.settings import IdentitySettings
from .limits.guard import LimitsGuard
from .limits.store import open_backing
from .metrics import Metrics, MetricsAccessLog
from .pipeline import Pipeline, Stage, Stages
from .policy.allowlist import Allowlist
from .policy.cors import Cors
from .policy.csrf import CsrfGuard
from .policy.inputs import InputPolice
from .policy.ownership import Ownership
from .policy.tokens import TokenPolicy
from .readiness import Readiness
from .settings import ConfigError, Settings

__all__ = [
    "Services", "build_backend", "build_handler", "build_pipeline", "build_services",
    "build_stages", "chain",
]


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
    """Count the request as in flight (until it settles, refused or not), then limits (when
    on): last, so that a limits check that waits for Redis is awaited as it is."""
    track = services.metrics.track
    if services.limits is None:
        return track
    return chain(track, services.limits.charge)


def chain(*stages: Stage) -> Stage:
    """Several checks in one pipeline slot, run in order; the first refusal wins. Synchronous
    while its stages are (see `Stage`)."""
    stages = tuple(stage for stage in stages if stage is not _no_check)
    if len(stages) <= 1:
        return stages[0] if stages else _no_check
    if len(stages) == 2:  # (the loop below, unrolled: slots of two run on every request)
        first, second = stages

        def run_two(request: ProxyRequest) -> Awaitable[None] | None:
            pending = first(request)
            if pending is not None:  # it waits: so does the second
                return _finish(pending, (second,), request)
            return second(request)

        return run_two

    def run(request: ProxyRequest) -> Awaitable[None] | None:
        for index, stage in enumerate(stages):
            pending = stage(request)
            if pending is not None:  # this one waits: so do the ones after it
                rest = stages[index + 1:]
                return _finish(pending, rest, request) if rest else pending
        return None

    return run


async def _finish(pending: Awaitable[None], rest: tuple[Stage, ...], request: ProxyRequest
                  ) -> None:
    await pending
    for stage in rest:
        later = stage(request)
        if later is not None:
            await later


def _no_check(request: ProxyRequest) -> None:
    return None


def _signing_secrets(settings: Settings) -> list[str]:
    """identity.secrets; without them a random per-process key (ids die with the process)."""
    if settings.identity.secrets:
        return list(settings.identity.secrets)
    if settings.server.workers > 1:
        raise ConfigError("identity.secrets", "several workers must share a signing secret "
                                              "(request ids are signed): set identity.secrets")
    return [_random.token_urlsafe(32)]


def _identity(settings: Settings) -> IdentitySettings:
    identity = settings.identity
    anonymous = {"address", "cookie"} & set(identity.resolvers)
    if identity.demo_anonymous and not anonymous and serving_mode(settings) == "demo":
        return dataclasses.replace(identity, resolvers=(*identity.resolvers, "address"))
    return identity


def build_stages(settings: Settings, services: Services | None = None) -> Stages:
    services = services or build_services(settings)
    policy = settings.policy
    allowlist = Allowlist(policy.allow, uploads=policy.allow_uploads)
    tokens = TokenPolicy(policy.tokens, allowlist)
    ownership: Stage = (
        Ownership(_signing_secrets(settings), settings.identity.request_id_ttl)
        if policy.ownership else _no_check
    )
    csrf = CsrfGuard(policy.cors.origins, host_user=settings.identity.csrf_host_user)
    return Stages(
        identify=build_identify(_identity(settings)),
        authorize=chain(csrf, allowlist, tokens.gate, ownership),
        police=chain(InputPolice(policy.inputs), tokens.police),
        charge=_charge(services),
    )


def build_backend(settings: Settings) -> Backend:
    from .backends.router import build_backend as routed  # hosted, local queue, or both

    return routed(settings)


def build_pipeline(
    settings: Settings, backend: Backend | None = None, services: Services | None = None
) -> Pipeline:
    services = services or build_services(settings)
    return Pipeline(
        backend or build_backend(settings),
        build_stages(settings, services),
        max_body_bytes=settings.server.max_body_bytes,
        max_response_bytes=settings.server.max_response_bytes,
        access_log=MetricsAccessLog(
            services.metrics, settings.log.access,
            stream=sys.stderr if settings.log.access_output == "stderr" else None),
    )


def build_handler(settings: Settings, pipeline: Pipeline) -> ASGIApp:
    """The ASGI callable for the proxy route: the pipeline, behind CORS when configured."""
    if settings.policy.cors.origins:
        return Cors(pipeline, settings.policy.cors)
    return pipeline
