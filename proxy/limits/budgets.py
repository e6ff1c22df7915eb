"""A budget is a named set of `limits` windows; this module checks, consumes and reports them.

Cost budgets count in units, kept internally in hundredths (the `limits` API counts integers),
so a quota of `"400/day"` units is a window of 40 000 and a 0.25-unit request costs 25.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from limits import RateLimitItem, parse_many

from ..errors import ProxyError

__all__ = ["COST_SCALE", "Budget", "HeaderPlan", "Window", "header_plan", "make_budget",
           "rate_limit_headers", "refusal"]

COST_SCALE = 100
_ceil = math.ceil


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity: cheap keys
class Budget:
    """One budget (`submit`, `cost`, `polling`, `global`) for one scope of endpoints."""

    name: str
    items: tuple[RateLimitItem, ...]
    scope: str  # "*" or the endpoint whose override this is
    scale: int = 1
    fail_open: bool = False
    per_caller: bool = True  # False: one counter for everyone (the global cap)
    # In every admitted response's RateLimit headers. Not the global cap's: what is left of
    # the owner's spend is nobody else's business, and would tell an attacker when the
    # service runs dry (the draft's security considerations); its 429 still says it.
    shown: bool = True
    # per item, built once: the header label ("submit-1-minute") and its policy entry
    labels: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    expiries: tuple[int, ...] = ()  # per item: its window in seconds

    def key(self, caller: str) -> tuple[str, str, str]:
        return (self.name, self.scope, caller if self.per_caller else "*")


@dataclass(slots=True)  # not frozen: built several times per request, and frozen inits are slow
class Window:
    """The state of one window after a check: for headers and refusals."""

    budget: Budget
    item: RateLimitItem
    remaining: int  # in the budget's own integer units
    reset: float  # seconds from now
    index: int = 0  # of `item` in `budget.items`
    turn: int = 0  # which fixed window a hit went into, in the store's numbering (refunds)

    @property
    def label(self) -> str:
        return self.budget.labels[self.index]

    def describe(self) -> str:
        item = self.item
        amount = item.amount // self.budget.scale
        per = item.GRANULARITY.name if item.multiples == 1 else (
            f"{item.multiples} {item.GRANULARITY.name}s")
        unit = " cost units" if self.budget.scale > 1 else ""
        return f"{amount}{unit} per {per}"


def make_budget(name: str, spec: str, scope: str, *, cost: bool, fail_open: bool,
                per_caller: bool = True) -> Budget | None:
    """None when `spec` is empty (that budget is off)."""
    if not spec:
        return None
    scale = COST_SCALE if cost else 1
    items = tuple(
        type(item)(item.amount * scale, item.multiples, item.namespace)
        for item in parse_many(spec)
    )
    labels = tuple(f"{name}-{item.multiples}-{item.GRANULARITY.name}" for item in items)
    policies = tuple(f'"{label}";q={item.amount // scale};w={item.get_expiry()}'
                     for label, item in zip(labels, items, strict=True))
    return Budget(name, items, scope, scale, fail_open, per_caller, per_caller, labels,
                  policies, tuple(item.get_expiry() for item in items))


@dataclass(frozen=True, slots=True)
class HeaderPlan:
    """The `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers)
    of one sequence of budgets, one item per window, made once: the policy value whole, the
    state as one format of two numbers per window (what remains in the budget's own units,
    whole seconds to reset), which engines report (`Admission.numbers`). Per request that is
    one `%`; formatting each window's item from its state cost ~5k instructions each."""

    policy: bytes
    state: bytes

    def headers(self, numbers: tuple[int, ...]) -> list[tuple[bytes, bytes]]:
        return [(b"ratelimit-policy", self.policy), (b"ratelimit", self.state % numbers)]


def _state_item(label: str) -> str:
    """One window's item of the `RateLimit` format: two numbers to fill in."""
    return f'"{label.replace("%", "%%")}";r=%d;t=%d'


def header_plan(budgets: Iterable[Budget]) -> HeaderPlan | None:
    """The headers of admissions that hit `budgets` in this order (None: no window shown).
    Engines report numbers for shown budgets only."""
    policies: list[str] = []
    states: list[str] = []
    for budget in budgets:
        if not budget.shown:
            continue
        policies += budget.policies
        states += map(_state_item, budget.labels)
    if not policies:
        return None
    return HeaderPlan(", ".join(policies).encode(), ", ".join(states).encode())


def rate_limit_headers(windows: list[Window]) -> list[tuple[bytes, bytes]]:
    """The headers of `windows` (a refusal's), through a `HeaderPlan` of just these."""
    if not windows:
        return []
    plan = HeaderPlan(
        ", ".join(w.budget.policies[w.index] for w in windows).encode(),
        ", ".join(_state_item(w.budget.labels[w.index]) for w in windows).encode())
    return plan.headers(tuple(number for w in windows
                              for number in (w.remaining // w.budget.scale, _ceil(w.reset))))


def refusal(window: Window, caller_note: str = "") -> ProxyError:
    """429 saying which limit was hit and when it resets; `Retry-After` in seconds."""
    reset = max(1, math.ceil(window.reset))
    detail = (f"Rate limit exceeded: {window.budget.name} limit of {window.describe()}"
              f"{caller_note}; try again in {reset} s")
    headers = {"retry-after": str(reset)}
    headers.update((k.decode(), v.decode()) for k, v in rate_limit_headers([window]))
    return ProxyError(
        429, detail, error_type="rate_limited", headers=headers,
        extra={"limit": {"budget": window.budget.name, "policy": window.describe(),
                         "reset": reset, "reset_at": math.ceil(time.time() + reset)}},
    )
