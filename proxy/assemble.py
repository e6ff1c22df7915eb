"""Builds the pipeline for a `Settings` value: which guards run, and which backend answers."""

from __future__ import annotations

import dataclasses
import secrets as _random

from .asgi_types import ASGIApp
from .backends.base import Backend
from .backends.router import serving_mode
from .context import ProxyRequest
from .identity import build_identify
from .identity.settings import IdentitySettings
from .observability import AccessLog
from .pipeline import Pipeline, Stage, Stages
from .policy.allowlist import Allowlist
from .policy.cors import Cors
from .policy.csrf import CsrfGuard
from .policy.inputs import InputPolice
from .policy.ownership import Ownership
from .policy.tokens import TokenPolicy
from .settings import ConfigError, Settings

__all__ = ["build_backend", "build_handler", "build_pipeline", "build_stages", "chain"]


def chain(*stages: Stage) -> Stage:
    """Several checks in one pipeline slot, run in order; the first refusal wins."""

    async def run(request: ProxyRequest) -> None:
        for stage in stages:
            await stage(request)

    return run


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


def build_stages(settings: Settings) -> Stages:
    policy = settings.policy
    allowlist = Allowlist(policy.allow, uploads=policy.allow_uploads)
    tokens = TokenPolicy(policy.tokens, allowlist)
    ownership = Ownership(_signing_secrets(settings), settings.identity.request_id_ttl)
    csrf = CsrfGuard(policy.cors.origins, host_user=settings.identity.csrf_host_user)
    return Stages(
        identify=build_identify(_identity(settings)),
        authorize=chain(csrf, allowlist, tokens.gate, ownership),
        police=chain(InputPolice(policy.inputs), tokens.police),
    )


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


def build_handler(settings: Settings, pipeline: Pipeline) -> ASGIApp:
    """The ASGI callable for the proxy route: the pipeline, behind CORS when configured."""
    if settings.policy.cors.origins:
        return Cors(pipeline, settings.policy.cors)
    return pipeline
