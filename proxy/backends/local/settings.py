"""`[local]`: the proxy as fal's queue in front of self-hosted workers (or the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def ConfigError(key: str, problem: str) -> Exception:
    """`proxy.settings.ConfigError`, imported late: that module imports this one."""
    from ...settings import ConfigError as error

    return error(key, problem)

__all__ = ["LocalSettings", "RouteSettings", "WorkerSettings"]

_SIZES = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
          "landscape_16_9")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """One worker: the in-process demo, or a fal-style HTTP worker at `url`."""

    name: str = ""
    kind: Literal["demo", "http"] = "demo"
    url: str = ""
    concurrency: int = 1
    step_seconds: float = 0.02  # demo only: the pretend time per inference step
    timeout: float = 600.0  # http only: longest a job may run on this worker

    def validate(self, key: str) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"{key}.concurrency", "must be at least 1")
        if self.kind == "http" and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url", "an http worker needs an http(s) URL")
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
        names = [w.name or f"worker-{i}" for i, w in enumerate(self.workers)]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.workers", "worker names must be unique")

    def worker_list(self) -> tuple[WorkerSettings, ...]:
        """The configured workers, named; the demo worker when none is configured."""
        workers = self.workers or (WorkerSettings(name="demo", kind="demo"),)
        return tuple(
            w if w.name else WorkerSettings(w.name or f"worker-{i}", w.kind, w.url,
                                            w.concurrency, w.step_seconds, w.timeout)
            for i, w in enumerate(workers)
        )
