"""The `charge` stage: every budget is checked before anything is sent upstream.

Per billed request (submit, run, stream), in one atomic step (in memory, and in one Redis
script): the cost quota and the global cost cap are hit with the request's cost, the submit
rate with 1, and a concurrency slot is reserved; if any of them has no room, none is taken.
So N concurrent requests against a limit of L let exactly L through, for cost as for rate.

A request the upstream does not accept (no 2xx) gets its cost refunded in a settle hook, so
an upstream refusal costs nothing; its submit-rate hit stays (rate limits count attempts).

Polling calls (status, result, cancel, uploads) hit their own bucket and release the caller's
concurrency slot when they show the job ended: COMPLETED status, a result, a cancel, or the
end of a status stream. A slot nobody releases expires after `concurrency_expiry`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..context import Outcome, ProxyRequest
from ..errors import ProxyError
from ..target import Operation, Target
from .budgets import COST_SCALE, Budget, HeaderPlan, header_plan, make_budget, refusal
from .cost import CostFunction, parse_input, requested_images, resolve_cost_function
from .engine import Admission, LocalEngine, Refund, Step
from .settings import EndpointLimits, LimitsSettings
from .store import Backing

__all__ = ["BILLED", "LimitsGuard", "Policy"]

BILLED = frozenset({Operation.SUBMIT, Operation.RUN, Operation.STREAM})
_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([0-9A-Za-z_.:-]{1,200})"')
_LOG = logging.getLogger("flux_proxy.limits")
RefusalHook = Callable[[str, str], None]  # (budget, "exceeded" | "unavailable")
UsageHook = Callable[[ProxyRequest, int, float], None]  # (request, images, cost units)


_NO_REFUNDS: list[Refund] = []  # (shared, never changed)
_ONE = (1,)  # a polling call's amount
_ceil = math.ceil


def _ignore_refusal(budget: str, reason: str) -> None:
    return None


def _ignore_usage(request: ProxyRequest, images: int, cost: float) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Policy:
    """The budgets that apply to one endpoint."""

    submit: Budget | None
    cost: Budget | None
    polling: Budget | None
    global_cost: Budget | None
    concurrency: int
    cost_function: CostFunction
    polling_hits: tuple[Step, ...]  # what a polling call hits
    submit_hits: tuple[Step, ...]  # what a billed call hits besides its cost
    cost_budgets: tuple[Budget, ...]  # cost and global, those on (both count COST_SCALE)
    # The memory engine's way (LocalEngine.admit_shape): the budgets a billed call hits, in
    # order (cost_budgets, then submit_hits'), and the amounts of those after the cost ones.
    billed_shape: tuple[Budget, ...]
    submit_amounts: tuple[int, ...]
    polling_shape: tuple[Budget, ...]
    billed_headers: HeaderPlan | None  # of cost_budgets + submit_hits' windows
    polling_headers: HeaderPlan | None  # of polling_hits' windows


@dataclass(slots=True)
class _Charge:
    caller: str
    cost: float
    data: Any  # the parsed input (its image count is read once it succeeded)
    policy: Policy
    units: int  # what each of the policy's cost budgets was hit with (refunded if not accepted)
    admitted: Admission | None = None  # where the hits went (what a refund names), its slot


def _cost_refunds(charge: _Charge, admitted: Admission) -> list[Refund]:
    """Each cost window the charge hit, with its units (a refused request's refund).

    Apart from `_settle_billed`: a comprehension there would make its locals closure cells,
    built on every settlement, accepted ones included."""
    windows = admitted.windows
    return [(window, charge.units) for budget in charge.policy.cost_budgets
            for window in windows if window.budget is budget]


class LimitsGuard:
    """Checks budgets before forwarding and settles them afterwards (see module docstring)."""

    def __init__(
        self, settings: LimitsSettings, backing: Backing, *,
        on_refusal: RefusalHook = _ignore_refusal, on_usage: UsageHook = _ignore_usage,
    ) -> None:
        self.settings = settings
        self.backing = backing
        self._on_refusal = on_refusal
        self._on_usage = on_usage
        self._exempt_ids = frozenset(settings.exempt_callers)
        self._exempt_kinds = frozenset(settings.exempt_kinds)
        self._exempting = bool(self._exempt_ids or self._exempt_kinds)
        self._usage = settings.usage
        self._default = self._policy("*", EndpointLimits())
        self._endpoints = {
            name: self._policy(name, override) for name, override in settings.endpoints.items()
        }
        # In memory, checks are synchronous calls: no coroutine per stage on the hot path.
        self._local = backing.engine if isinstance(backing.engine, LocalEngine) else None
        # Status calls name the app, not the endpoint, so they release slots whenever any
        # endpoint may have taken one.
        self._slots_used = any(
            p.concurrency > 0 for p in (self._default, *self._endpoints.values()))
        self._released: dict[tuple[str, str], None] = {}  # recently released jobs, oldest first
        # Pending slot names: unique across processes sharing a store, cheaper than uuid4.
        self._slot_prefix = f"{secrets.token_hex(8)}-"
        self._slot_numbers = itertools.count()

    def _policy(self, scope: str, override: EndpointLimits) -> Policy:
        s = self.settings

        def budget(name: str, spec: str | None, default: str, fail: str, *, cost: bool = False
                   ) -> Budget | None:
            if spec is None:
                return make_budget(name, default, "*", cost=cost, fail_open=fail == "open")
            return make_budget(name, spec, scope, cost=cost, fail_open=fail == "open")

        polling = budget("polling", override.polling, s.polling, s.fail_polling)
        cost = budget("cost", override.cost, s.cost, s.fail_cost, cost=True)
        global_cost = make_budget("global", s.global_cost, "*", cost=True,
                                  fail_open=s.fail_global == "open", per_caller=False)
        submit = budget("submit", override.submit, s.submit, s.fail_submit)
        cost_budgets = tuple(b for b in (cost, global_cost) if b is not None)
        billed_shape = (*cost_budgets, *([submit] if submit else []))
        return Policy(
            submit=submit,
            cost=cost,
            polling=polling,
            global_cost=global_cost,
            concurrency=s.concurrency if override.concurrency is None else override.concurrency,
            cost_function=resolve_cost_function(override.cost_function or s.cost_function),
            polling_hits=((polling, 1),) if polling is not None else (),
            submit_hits=((submit, 1),) if submit is not None else (),
            cost_budgets=cost_budgets,
            billed_shape=billed_shape,
            submit_amounts=(1,) if submit else (),
            polling_shape=(polling,) if polling else (),
            billed_headers=header_plan(billed_shape),
            polling_headers=header_plan([polling] if polling else []),
        )

    def policy_for(self, target: Target) -> Policy:
        endpoints = self._endpoints
        if endpoints:
            for key in (target.endpoint_id, target.app_id):
                if key and key in endpoints:
                    return endpoints[key]
        return self._default

    # -- the stage ------------------------------------------------------------------------

    def charge(self, request: ProxyRequest) -> Awaitable[None] | None:
        """The stage. In memory it is done when it returns (None); with Redis it returns the
        awaitable that finishes it (see `pipeline.Stage`)."""
        caller = request.caller
        if caller is None:
            caller_id, exempt = f"ip:{request.client_host}", False
        else:
            caller_id = caller.id
            if caller.kind == "anonymous" and caller.address:
                # An anonymous cookie is free to drop: count anonymous callers by address, so
                # a client that sends no cookie (a new id each time) cannot escape its limits.
                caller_id = f"ip:{caller.address}"
            exempt = self._exempting and (
                caller.id in self._exempt_ids or caller.kind in self._exempt_kinds)
        policy = self.policy_for(request.target) if self._endpoints else self._default
        if request.target.operation in BILLED:
            return self._charge_billed(request, caller_id, policy, exempt)
        return self._charge_polling(request, caller_id, policy, exempt)

    def _charge_billed(self, request: ProxyRequest, caller: str, policy: Policy, exempt: bool
                       ) -> Awaitable[None] | None:
        data = request.json if request.json is not None else parse_input(request.body)
        cost = float(policy.cost_function(data))
        cost_budgets = policy.cost_budgets
        # What each cost budget is hit with: hundredths of a unit (COST_SCALE), rounded up,
        # and never 0 for a real request
        units = max(1, _ceil(cost * COST_SCALE - 1e-9)) if cost_budgets else 0
        charge = _Charge(caller, cost, data, policy, units)
        limit = policy.concurrency
        if exempt or not (policy.billed_shape or limit > 0):
            self._billed(request, charge, None)
            return None
        local = self._local
        if local is None:
            slot = (f"pending:{self._slot_prefix}{next(self._slot_numbers)}", limit
                    ) if limit > 0 else None
            cost_hits = []  # (a loop: a generator here costs a Redis submit ~3k instructions)
            for budget in cost_budgets:
                cost_hits.append((budget, units))
            return self._charge_billed_remote(request, charge, (*cost_hits, *policy.submit_hits),
                                              slot, policy.billed_headers)
        # In memory a pending slot is a number: unique in this process, nothing to format.
        admitted = local.admit_shape(
            caller, policy.billed_shape, (units,) * len(cost_budgets) + policy.submit_amounts,
            next(self._slot_numbers) if limit > 0 else None, limit)
        if admitted.refused is not None or admitted.slot_refused is not None:
            self._judged(admitted, limit)  # (raises: its 429)
        self._billed(request, charge, admitted, policy.billed_headers)
        return None

    async def _charge_billed_remote(self, request: ProxyRequest, charge: _Charge,
                                    hits: tuple[Step, ...], slot: tuple[str, int] | None,
                                    plan: HeaderPlan | None) -> None:
        # The engine's future is awaited here directly (no coroutine in between: each await
        # layer costs every request CPU when the reply wakes it).
        admitted: Admission | None
        try:
            admitted = await self.backing.engine.admit(charge.caller, hits, slot)
        except self.backing.errors as exc:
            self._unavailable(hits, slot, exc)
            admitted = None
        else:
            self._judged(admitted, slot[1] if slot else 0)
        self._billed(request, charge, admitted, plan)

    def _billed(self, request: ProxyRequest, charge: _Charge, admitted: Admission | None,
                plan: HeaderPlan | None = None) -> None:
        """An admitted billed request: headers, and what settles it."""
        request.notes["limits"] = charge
        request.settle_hooks.append(self._settle_billed)
        if admitted is not None:
            charge.admitted = admitted
            if plan is not None:
                request.response_headers += plan.headers(admitted.numbers)

    def _charge_polling(self, request: ProxyRequest, caller: str, policy: Policy, exempt: bool
                        ) -> Awaitable[None] | None:
        hits = policy.polling_hits
        if not exempt and hits:
            local = self._local
            plan = policy.polling_headers
            if local is None:
                return self._charge_polling_remote(request, caller, hits, plan)
            admitted = self._judged(
                local.admit_shape(caller, policy.polling_shape, _ONE, None, 0), 0)
            if plan is not None:
                request.response_headers += plan.headers(admitted.numbers)
        if not exempt:
            self._follow_job(request, caller)
        return None

    async def _charge_polling_remote(self, request: ProxyRequest, caller: str,
                                     hits: tuple[Step, ...], plan: HeaderPlan | None
                                     ) -> None:
        admitted: Admission | None
        try:
            admitted = await self.backing.engine.admit(caller, hits, None)
        except self.backing.errors as exc:
            self._unavailable(hits, None, exc)
            admitted = None
        else:
            self._judged(admitted, 0)
        if admitted is not None and plan is not None:
            request.response_headers += plan.headers(admitted.numbers)
        self._follow_job(request, caller)

    def _follow_job(self, request: ProxyRequest, caller: str) -> None:
        """A polling call that may show its job ended releases the job's slot."""
        op = request.target.operation
        if not self._slots_used or not request.target.request_id:
            return
        request.notes["limits"] = caller
        if op is Operation.STATUS:
            request.response_filters.insert(0, self._watch_status)
        elif op in (Operation.RESULT, Operation.CANCEL, Operation.STATUS_STREAM):
            request.settle_hooks.append(self._settle_polling)

    # -- admission (guarded by each budget's fail mode) ------------------------------------

    def _judged(self, admitted: Admission, limit: int) -> Admission:
        """`admitted`, or the 429 for the budget that refused (`limit`: the concurrency
        limit, when a slot was asked for)."""
        if admitted.refused is not None:
            self._on_refusal(admitted.refused.budget.name, "exceeded")
            raise refusal(admitted.refused)
        if admitted.slot_refused is not None:
            in_flight, expires = admitted.slot_refused
            self._on_refusal("concurrency", "exceeded")
            raise ProxyError(
                429, f"Rate limit exceeded: concurrency limit of {limit} requests in flight "
                f"(you have {in_flight}); a slot frees when one of them completes or is "
                f"cancelled (at the latest in {max(1, int(expires))} s)",
                error_type="rate_limited", headers={"retry-after": "1"},
                extra={"limit": {"budget": "concurrency", "policy": f"{limit} in flight",
                                 "reset": 1, "in_flight": in_flight}},
            )
        return admitted

    def _unavailable(self, hits: tuple[Step, ...], slot: tuple[str, int] | None,
                     exc: BaseException) -> None:
        """The store failed: refuse (503) on the first budget that fails closed, in check
        order; otherwise log and let the request through (unlimited: no admission)."""
        order = [(budget.name, budget.fail_open) for budget, _ in hits]
        if slot is not None:
            order.append(("concurrency", self.settings.fail_concurrency == "open"))
        closed = next((name for name, fail_open in order if not fail_open), None)
        _LOG.warning("limits store unavailable (%s budget, failing %s): %s",
                     closed or (order[0][0] if order else "no"), "closed" if closed else "open",
                     exc)
        if closed is None:
            return
        self._on_refusal(closed, "unavailable")
        raise ProxyError(
            503, f"Requests are paused: the rate-limit store is unavailable, so the {closed} "
            "limit cannot be checked. Try again shortly.",
            error_type="limits_unavailable", headers={"retry-after": "5"},
        ) from None

    async def _release(self, caller: str, slot: str | None) -> None:
        if slot is None:
            return
        try:
            await self.backing.slots.release(caller, slot)
        except self.backing.errors as exc:  # it expires by itself
            _LOG.warning("could not release a concurrency slot: %s", exc)

    # -- settlement ------------------------------------------------------------------------

    def _settle_billed(self, request: ProxyRequest, outcome: Outcome) -> None:
        charge: _Charge = request.notes["limits"]
        admitted = charge.admitted
        up = outcome.upstream_status
        slot: tuple[str | int, str | None] | None = None
        if up is not None and 200 <= up < 300:  # accepted: it is used, and a job keeps its slot
            images = requested_images(charge.data)
            self._on_usage(request, images, charge.cost)
            usage = (images, charge.cost) if self._usage else None
            member = admitted.slot if admitted is not None else None
            if member is not None:
                if request.target.operation is not Operation.SUBMIT:  # a run or stream: over
                    slot = (member, None)
                else:
                    # Queued: the slot follows the job, named by the id in fal's own answer
                    # (one flat object: found without parsing it all; kept from before any
                    # response filter rewrote it).
                    found = _REQUEST_ID.search(outcome.body)
                    if found is not None:
                        slot = (member, "job:" + found.group(1).decode())
                    # (a submit whose id could not be read keeps its slot until it expires)
            if usage is not None or slot is not None:
                self.backing.engine.settle_later(
                    charge.caller, _NO_REFUNDS, admitted.at if admitted is not None else 0.0,
                    usage, slot)
            return
        if admitted is None:
            return
        # not accepted: the cost was hit, take it back; the slot is free again
        refunds = _cost_refunds(charge, admitted) if charge.units else _NO_REFUNDS
        if admitted.slot is not None:
            slot = (admitted.slot, None)
        if refunds or slot is not None:
            self.backing.engine.settle_later(charge.caller, refunds, admitted.at, None, slot)

    def _watch_status(self, request: ProxyRequest, status: int, body: bytes
                      ) -> bytes | Awaitable[bytes]:
        # (find, not `in`: CPython's `bytes in bytes` first tries the needle as an integer
        # and formats the TypeError it then drops, ~1k instructions on every poll)
        if (status == 200 and body.find(b"COMPLETED") >= 0
                and not self._already_released(request)):
            try:
                done = json.loads(body).get("status") == "COMPLETED"
            except (ValueError, AttributeError):
                done = False
            if done:
                return self._release_and_pass(request, body)
        return body

    async def _release_and_pass(self, request: ProxyRequest, body: bytes) -> bytes:
        await self._release_job(request)
        return body

    def _already_released(self, request: ProxyRequest) -> bool:
        """A finished job is polled again and again: skip parsing its answer each time."""
        caller = request.notes.get("limits")
        return (caller, request.target.request_id) in self._released

    async def _settle_polling(self, request: ProxyRequest, outcome: Outcome) -> None:
        op = request.target.operation
        up = outcome.upstream_status
        if up is None:
            return
        if op is Operation.STATUS_STREAM:
            ended = outcome.streamed and outcome.error is None  # fal closes after COMPLETED
        elif op is Operation.CANCEL:
            ended = 200 <= up < 300 or up in (400, 404)  # requested, ALREADY_COMPLETED, gone
        else:  # RESULT: any answer but "still in progress" means the job is over
            ended = up not in (202, 400, 401, 403, 429)
        if ended:
            await self._release_job(request)

    async def _release_job(self, request: ProxyRequest) -> None:
        caller: Any = request.notes.get("limits")
        request_id = request.target.request_id
        if isinstance(caller, str) and request_id:
            # A finished job keeps answering COMPLETED to every poll: release its slot once
            # per process, not once per poll (a store round trip each time).
            key = (caller, request_id)
            if key in self._released:
                return
            if len(self._released) >= 4096:
                self._released.pop(next(iter(self._released)))
            self._released[key] = None
            await self._release(caller, f"job:{request_id}")
