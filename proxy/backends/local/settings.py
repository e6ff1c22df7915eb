"""`[local]`: the proxy as fal's queue in front of self-hosted workers (or the demo)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ...settings import Secret, refuse_password_in_url


def ConfigError(key: str, problem: str) -> Exception:
    """`proxy.settings.ConfigError`, imported late: that module imports this one."""
    from ...settings import ConfigError as error

    return error(key, problem)

__all__ = ["ComfySettings", "LocalSettings", "RouteSettings", "WorkerSettings"]

_NO_PASSWORD = Secret("")

_SIZES = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
          "landscape_16_9")


@dataclass(frozen=True, slots=True)
class ComfySettings:
    """How the FLUX workflow template is patched: the node (by id, or by `_meta.title`) that
    takes each input. An empty node name means the template has no such input."""

    workflow: str = ""  # API-format workflow file ("Export (API)"); empty: the shipped one
    prompt_node: str = "6"  # CLIPTextEncode: inputs.text
    seed_node: str = "25"  # RandomNoise (noise_seed) or KSampler (seed)
    size_node: str = "27"  # EmptySD3LatentImage / EmptyLatentImage: width, height, batch_size
    steps_node: str = "17"  # BasicScheduler or KSampler: steps
    guidance_node: str = "26"  # FluxGuidance: guidance
    output_node: str = "9"  # SaveImage: its images are the result


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """One worker: the in-process demo, a fal-style HTTP worker or a ComfyUI server at `url`."""

    name: str = ""
    kind: Literal["demo", "http", "comfyui"] = "demo"
    url: str = ""
    concurrency: int = 1
    step_seconds: float = 0.02  # demo only: the pretend time per inference step
    timeout: float = 600.0  # http/comfyui: longest a job may run on this worker
    comfyui: ComfySettings = field(default_factory=lambda: ComfySettings())

    def validate(self, key: str) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"{key}.concurrency", "must be at least 1")
        if self.kind in ("http", "comfyui") and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url", f"a {self.kind} worker needs an http(s) URL")
        if self.step_seconds < 0 or self.timeout <= 0:
            raise ConfigError(f"{key}.step_seconds", "times must not be negative")
        object.__setattr__(self, "url", self.url.rstrip("/"))


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """Endpoint ids matching `pattern` (fnmatch, e.g. "fal-ai/flux/*") go to `backend`."""

    pattern: str = "*"
    backend: Literal["local", "hosted"] = "local"


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """The local queue: job store, workers, routing, images, uploads and webhooks."""

    mode: Literal["auto", "hosted", "local"] = "auto"  # auto: hosted with a fal key, else local
    data_dir: str = "flux-proxy-data"  # SQLite job store, images and uploads live here
    result_ttl_seconds: float = 3600.0  # finished jobs, their images and uploads are kept this long
    public_url: str = ""  # how browsers reach this server; empty: from the request's Host
    path: str = "/fal-local"  # where images and uploads are served (and PUT)
    workers: tuple[WorkerSettings, ...] = ()  # none: one demo worker
    routes: tuple[RouteSettings, ...] = ()  # first match wins; none: everything local
    overflow_depth: int = 0  # >0 and a fal key: submits go hosted once this many jobs wait
    max_queue: int = 10_000  # submits beyond this are refused with 429
    health_interval: float = 5.0  # seconds between worker readiness checks
    poll_interval: float = 0.5  # how often waiters re-read the store (other processes)
    keepalive_seconds: float = 15.0  # SSE status-stream comment interval
    default_steps: int = 28
    upload_max_bytes: int = 10 * 1_048_576
    upload_quota_bytes: int = 100 * 1_048_576  # per caller, over the kept uploads
    upload_content_types: tuple[str, ...] = (
        "image/png", "image/jpeg", "image/webp", "image/gif", "text/plain",
        "application/octet-stream",
    )
    webhook_hosts: tuple[str, ...] = ()  # hosts (host or host:port) webhooks may go to
    webhook_attempts: int = 5
    webhook_timeout: float = 15.0
    webhook_backoff: float = 1.0  # first retry delay in seconds, doubled each time
    store: Literal["sqlite", "redis"] = "sqlite"  # redis: several proxy processes share jobs
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: Secret = _NO_PASSWORD  # kept out of `redis_url`
    redis_prefix: str = "flux-proxy:jobs"
    lease_seconds: float = 30.0  # a claimed job whose process stops renewing is re-queued

    def validate(self, key: str) -> None:
        path = self.path
        if not path.startswith("/") or path.endswith("/") or len(path) < 2:
            raise ConfigError(f"{key}.path", "must start with '/' and not end with '/'")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.public_url", "must be an absolute http(s) URL")
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        for name in ("result_ttl_seconds", "health_interval", "poll_interval",
                     "keepalive_seconds", "webhook_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be a positive number of seconds")
        if self.max_queue < 1 or self.default_steps < 1 or self.webhook_attempts < 1:
            raise ConfigError(key, "max_queue, default_steps and webhook_attempts must be >= 1")
        if self.overflow_depth < 0:
            raise ConfigError(f"{key}.overflow_depth", "must not be negative")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{key}.redis_url", "must be redis://host:port/db")
        refuse_password_in_url(f"{key}.redis_url", self.redis_url, "local")
        if self.lease_seconds < 1:
            raise ConfigError(f"{key}.lease_seconds", "must be at least 1 second")
        names = [w.name or f"worker-{i}" for i, w in enumerate(self.workers)]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.workers", "worker names must be unique")

    def worker_list(self) -> tuple[WorkerSettings, ...]:
        """The configured workers, named; the demo worker when none is configured."""
        workers = self.workers or (WorkerSettings(name="demo", kind="demo"),)
        return tuple(
            w if w.name else dataclasses.replace(w, name=f"worker-{i}")
            for i, w in enumerate(workers)
        )
