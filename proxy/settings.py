"""One typed settings object, built from a TOML file plus environment overrides.

Everything the proxy does is decided by a `Settings` value passed in explicitly; nothing deep in
the code reads the environment. `load_settings` is the only place that does, and every problem
it finds names the key (``upstream.connect_timeout``) and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from .identity.settings import IdentitySettings
from .policy.settings import PolicySettings

__all__ = [
    "ConfigError",
    "DemoSettings",
    "FalSettings",
    "LogSettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "load_settings",
    "settings_from_dict",
]


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}" if key else f"config error: {problem}")


class Secret(str):
    """A string that never shows itself in repr(), logs or `check-config` output."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def masked(self) -> str:
        return f"***{self[-2:]}" if len(self) > 8 else ("***" if self else "")


_NO_SECRET = Secret("")


def refuse_password_in_url(key: str, url: str, section: str) -> None:
    """A Redis URL must not carry its password (it would show in logs and `check-config`)."""
    if "@" in url or "password=" in url.lower():
        raise ConfigError(key, f"put the Redis password in {section}.redis_password (or "
                          f"FLUX_PROXY__{section.upper()}__REDIS_PASSWORD), not in the URL")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_base_url(key: str, value: str) -> str:
    """Upstream bases: https anywhere, plain http only on loopback (tests, local gateways)."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(key, f"must be an absolute http(s) URL, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(key, "must not contain credentials, a query or a fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(key, "plain http is accepted only for loopback addresses; use https")
    return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where the standalone server listens and where the proxy route lives."""

    host: str = "127.0.0.1"
    port: int = 8000
    route: str = "/api/fal/proxy"
    max_body_bytes: int = 1_048_576
    max_response_bytes: int = 64 * 1_048_576
    workers: int = 1
    # `flux-proxy serve` only: each response's head and body in one socket write
    # (http_protocol.py); off, uvicorn's own protocol writes them apart.
    coalesce_writes: bool = True

    def validate(self, key: str) -> None:
        route = self.route
        if not route.startswith("/") or route != route.rstrip("/") or "?" in route:
            raise ConfigError(f"{key}.route", "must start with '/' and not end with '/'")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{key}.port", "must be between 0 and 65535")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"{key}.max_body_bytes", "must be at least 1024")
        if self.max_response_bytes < 1024:
            raise ConfigError(f"{key}.max_response_bytes", "must be at least 1024")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers", "must be at least 1")


@dataclass(frozen=True, slots=True)
class FalSettings:
    """The server's fal credentials: `key`, or `key_id` + `key_secret`."""

    key: Secret = _NO_SECRET
    key_id: str = ""
    key_secret: Secret = _NO_SECRET

    def validate(self, key: str) -> None:
        if bool(self.key_id) != bool(self.key_secret):
            raise ConfigError(f"{key}.key_secret", "key_id and key_secret must be set together")
        for name in ("key", "key_id", "key_secret"):
            value: str = getattr(self, name)
            if any(c.isspace() or not c.isprintable() for c in value):
                raise ConfigError(f"{key}.{name}", "contains whitespace or control characters")

    @property
    def configured(self) -> bool:
        return bool(self.key or self.key_id)

    def authorization(self) -> str:
        """The upstream `Authorization` value; empty when no key is configured."""
        if self.key:
            return f"Key {self.key}"
        if self.key_id:
            return f"Key {self.key_id}:{self.key_secret}"
        return ""


DEFAULT_FORWARD_HEADERS = (
    "accept",
    "content-type",
    "user-agent",
    "x-fal-queue-priority",
    "x-fal-runner-hint",
    "x-fal-request-timeout",
    "x-fal-object-lifecycle-preference",
    "x-fal-object-lifecycle",
)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Where fal's hosts are reached, how long we wait, and which request headers may pass."""

    run: str = "https://fal.run"
    queue: str = "https://queue.fal.run"
    rest: str = "https://rest.fal.ai"
    connect_timeout: float = 5.0
    first_byte_timeout: float = 120.0
    stream_idle_timeout: float = 60.0
    pool_size: int = 512
    keepalive_timeout: float = 30.0
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS

    def validate(self, key: str) -> None:
        for name in ("run", "queue", "rest"):
            object.__setattr__(self, name, _check_base_url(f"{key}.{name}", getattr(self, name)))
        for name in ("connect_timeout", "first_byte_timeout", "stream_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be a positive number of seconds")
        if self.pool_size < 1:
            raise ConfigError(f"{key}.pool_size", "must be at least 1")
        bad = [h for h in self.forward_headers if h.lower() in _NEVER_FORWARD]
        if bad:
            raise ConfigError(f"{key}.forward_headers", f"{bad[0]!r} may never be forwarded")
        object.__setattr__(
            self, "forward_headers", tuple(h.lower() for h in self.forward_headers)
        )


_NEVER_FORWARD = frozenset(
    {"authorization", "cookie", "x-fal-target-url", "host", "content-length", "connection",
     "transfer-encoding", "proxy-authorization", "forwarded", "x-forwarded-for"}
)


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Logging: the level and whether each request gets an access-log line."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    access: bool = True
    # Where access lines go. "logging": through the `flux_proxy.access` logger, as your own
    # logging set-up routes it. "stderr": straight to standard error as `flux_proxy.access
    # {json}` lines, written once per event-loop turn (the logging module's per-record work
    # was ~20% of a status poll's CPU). "auto": stderr under `flux-proxy serve`, which owns the
    # process's logging; logging wherever the proxy is embedded.
    access_output: Literal["auto", "logging", "stderr"] = "auto"


# Sections that live in their own packages import ConfigError/Secret from here, hence below.
from .backends.local.settings import LocalSettings  # noqa: E402
from .limits.settings import LimitsSettings  # noqa: E402


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The demo page at `/demo/` of the standalone app.

    `page` is "auto" (on when running the embedded demo backend, off in hosted mode), or
    true/false to force it.
    """

    page: bool | Literal["auto"] = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy needs, in one explicit object."""

    server: ServerSettings = field(default_factory=ServerSettings)
    fal: FalSettings = field(default_factory=FalSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    log: LogSettings = field(default_factory=LogSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)

    def validate(self, key: str = "") -> None:
        """Cross-section checks; each section validated itself already."""

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with secrets masked, for `check-config`."""
        public: dict[str, Any] = _public(self)
        return public


def _public(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.masked()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _public(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


# --- generic typed construction ---------------------------------------------------------------

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check and convert one TOML value against a type annotation."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(key, " or ".join(errors))
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        (item_tp, *_rest) = get_args(tp)
        items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        _key_tp, val_tp = get_args(tp)
        return {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Secret:
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return Secret(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(key, f"unsupported setting type {_type_name(tp)}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(where, f"unknown setting (known: {', '.join(sorted(names))})")
    kwargs = {
        k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()
    }
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Build and validate `Settings` from a plain dict shaped like the TOML file."""
    return _build(Settings, data, "")


# --- environment ------------------------------------------------------------------------------

ENV_MAP: dict[str, tuple[str, ...]] = {
    "FAL_KEY": ("fal", "key"),
    "FAL_KEY_ID": ("fal", "key_id"),
    "FAL_KEY_SECRET": ("fal", "key_secret"),
    "FLUX_PROXY_UPSTREAM_RUN": ("upstream", "run"),
    "FLUX_PROXY_UPSTREAM_QUEUE": ("upstream", "queue"),
    "FLUX_PROXY_UPSTREAM_REST": ("upstream", "rest"),
    "FLUX_PROXY_ROUTE": ("server", "route"),
    "FLUX_PROXY_LOG_LEVEL": ("log", "level"),
}
GENERIC_ENV_PREFIX = "FLUX_PROXY__"


def _env_value(raw: str) -> Any:
    """`FLUX_PROXY__a__b=<TOML value>`; a bare word that is not TOML is taken as a string."""
    import tomllib  # only with a config file or overrides: `FAL_KEY=... serve` starts without

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(path), f"cannot set from {source}: parent is not a table")
        node = child
    node[path[-1]] = value


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate.

    `env` defaults to ``os.environ``; tests pass their own mapping. The config path comes from
    the argument, else ``FLUX_PROXY_CONFIG``.
    """
    env = os.environ if env is None else env
    path = path or env.get("FLUX_PROXY_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        import tomllib

        file = Path(path)
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{file} is not valid TOML: {exc}") from None
    for name, dest in ENV_MAP.items():
        if env.get(name):
            _set_path(data, dest, env[name], name)
    for name, raw in env.items():
        if name.startswith(GENERIC_ENV_PREFIX) and len(name) > len(GENERIC_ENV_PREFIX):
            dest = tuple(p.lower() for p in name[len(GENERIC_ENV_PREFIX) :].split("__"))
            if any(not p for p in dest):
                raise ConfigError(name, "malformed environment override name")
            _set_path(data, dest, _env_value(raw), name)
    return settings_from_dict(data)
