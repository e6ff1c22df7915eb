"""The `[limits]` settings section: budgets per caller, per endpoint, and one global cap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from limits import parse_many

from ..settings import ConfigError, Secret, refuse_password_in_url

__all__ = ["EndpointLimits", "FailMode", "LimitsSettings"]

FailMode = Literal["open", "closed"]
_NO_PASSWORD = Secret("")
COST_FUNCTIONS = ("flux", "images", "request")


def check_rate(key: str, value: str) -> None:
    """A limit string in slowapi syntax (`"20/minute;200/day"`); empty means no limit."""
    if not value:
        return
    try:
        items = parse_many(value)
    except ValueError as exc:
        raise ConfigError(key, f"not a limit string like '20/minute;200/day': {exc}") from None
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(key, "every limit must allow at least 1 per window")


def check_cost_function(key: str, value: str) -> None:
    if value in COST_FUNCTIONS or (":" in value and all(value.split(":", 1))):
        return
    raise ConfigError(
        key, f"must be one of {', '.join(COST_FUNCTIONS)} or 'package.module:function'"
    )


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """Overrides for one endpoint (`fal-ai/flux/dev`) or app (`fal-ai/flux`); unset = default.

    An endpoint with its own limit string also gets its own counters for that budget.
    """

    submit: str | None = None
    cost: str | None = None
    polling: str | None = None
    concurrency: int | None = None
    cost_function: str | None = None

    def validate(self, key: str) -> None:
        for name in ("submit", "cost", "polling"):
            value = getattr(self, name)
            if value is not None:
                check_rate(f"{key}.{name}", value)
        if self.concurrency is not None and self.concurrency < 0:
            raise ConfigError(f"{key}.concurrency", "must be 0 (unlimited) or more")
        if self.cost_function is not None:
            check_cost_function(f"{key}.cost_function", self.cost_function)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Rate limits, cost quotas, concurrency and usage accounting, keyed on the caller id.

    Cost is in units: one 1024x1024 FLUX image at 28 steps is 1 unit. An empty limit string
    turns that budget off; `concurrency = 0` means unlimited.
    """

    enabled: bool = True
    storage: str = "memory://"  # or redis://host:port/db (several processes share it)
    redis_password: Secret = _NO_PASSWORD  # kept out of `storage` so check-config can show it
    strategy: Literal["moving-window", "sliding-window"] = "moving-window"
    # Cost windows count hundredths of a unit; a moving window stores one entry per counted
    # item (100 per 1-unit image), so cost and global budgets default to the sliding window.
    cost_strategy: Literal["moving-window", "sliding-window"] = "sliding-window"
    key_prefix: str = "flux-proxy"
    submit: str = "10/minute;200/day"  # submits, runs and streams
    cost: str = "100/hour;400/day"  # cost units
    polling: str = "50/second"  # status, result, cancel, storage uploads
    concurrency: int = 4  # queued or running jobs and open streams
    concurrency_expiry: float = 600.0  # seconds after which a slot frees itself
    global_cost: str = "5000/day"  # all callers together
    cost_function: str = "flux"
    exempt_callers: tuple[str, ...] = ()  # caller ids, e.g. "user:admin"
    exempt_kinds: tuple[str, ...] = ()  # caller kinds, e.g. "user"
    usage: bool = True  # count requests, images and cost per caller and day
    usage_retention_days: int = 90
    redis_timeout: float = 0.5  # seconds per Redis call before it counts as down
    fail_submit: FailMode = "closed"
    fail_cost: FailMode = "closed"
    fail_concurrency: FailMode = "closed"
    fail_global: FailMode = "closed"
    fail_polling: FailMode = "open"
    endpoints: dict[str, EndpointLimits] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        for name in ("submit", "cost", "polling", "global_cost"):
            check_rate(f"{key}.{name}", getattr(self, name))
        check_cost_function(f"{key}.cost_function", self.cost_function)
        scheme = self.storage.split("://", 1)[0]
        if "://" not in self.storage or scheme not in ("memory", "redis", "rediss"):
            raise ConfigError(f"{key}.storage", "must be memory:// or redis://host:port/db")
        refuse_password_in_url(f"{key}.storage", self.storage, "limits")
        if self.concurrency < 0:
            raise ConfigError(f"{key}.concurrency", "must be 0 (unlimited) or more")
        if self.concurrency_expiry <= 0:
            raise ConfigError(f"{key}.concurrency_expiry", "must be a positive number of seconds")
        if self.redis_timeout <= 0:
            raise ConfigError(f"{key}.redis_timeout", "must be a positive number of seconds")
        if self.usage_retention_days < 1:
            raise ConfigError(f"{key}.usage_retention_days", "must be at least 1")
        if not self.key_prefix or any(c.isspace() for c in self.key_prefix):
            raise ConfigError(f"{key}.key_prefix", "must be a non-empty word")

    @property
    def uses_redis(self) -> bool:
        return self.storage.startswith(("redis://", "rediss://"))
