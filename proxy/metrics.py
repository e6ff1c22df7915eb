"""Prometheus metrics for operators, in a registry of the proxy's own (nothing global).

A `Metrics` is itself an ASGI app: `/metrics` serves it; mount it yourself when the proxy is
embedded. With several worker processes each has its own registry: scrape each worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .asgi_types import Receive, Scope, Send
from .context import Outcome, ProxyRequest
from .observability import AccessLog

__all__ = ["Metrics", "MetricsAccessLog"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The proxy's counters, gauges and histograms, plus the ASGI app that serves them."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flux_proxy_requests", "Proxied requests by operation and answered status.",
            ["operation", "status"], registry=registry)
        self.upstream_latency = Histogram(
            "flux_proxy_upstream_latency_seconds",
            "Time until the upstream's response head arrived.", ["operation"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.refusals = Counter(
            "flux_proxy_rate_limit_refusals",
            "Requests refused by a budget: exceeded (429) or store unavailable (503).",
            ["budget", "reason"], registry=registry)
        self.in_flight = Gauge(
            "flux_proxy_in_flight_requests", "Admitted requests not yet answered.",
            registry=registry)
        self.open_streams = Gauge(
            "flux_proxy_open_streams", "Streaming requests (run streams, status streams) open.",
            registry=registry)
        self.images = Counter(
            "flux_proxy_images", "Images requested by upstream-accepted requests.",
            ["endpoint"], registry=registry)
        self.cost = Counter(
            "flux_proxy_cost_units", "Cost units of upstream-accepted requests.",
            ["endpoint"], registry=registry)
        self._usage: dict[str, tuple[Counter, Counter]] = {}
        self._requests: dict[tuple[str, int], Counter] = {}

    # -- hooks ---------------------------------------------------------------------------

    async def track(self, request: ProxyRequest) -> None:
        """Last stage: the request is admitted and now in flight until it settles."""
        self.in_flight.inc()
        if request.target.streaming:
            self.open_streams.inc()
        request.settle_hooks.append(self._settled)

    async def _settled(self, request: ProxyRequest, outcome: Outcome) -> None:
        self.in_flight.dec()
        if request.target.streaming:
            self.open_streams.dec()

    def refused(self, budget: str, reason: str) -> None:
        self.refusals.labels(budget, reason).inc()

    def used(self, request: ProxyRequest, images: int, cost: float) -> None:
        endpoint = request.target.endpoint_id or request.target.app_id or ""
        pair = self._usage.get(endpoint)
        if pair is None:  # endpoints are allowlisted, so few: look their samples up once
            pair = self._usage[endpoint] = (self.images.labels(endpoint),
                                            self.cost.labels(endpoint))
        pair[0].inc(images)
        pair[1].inc(cost)

    def record(self, request: ProxyRequest | None, outcome: Outcome) -> None:
        operation = request.target.operation.value if request is not None else "invalid"
        key = (operation, outcome.status)
        sample = self._requests.get(key)
        if sample is None:  # operations and statuses are few: look each sample up once
            sample = self._requests[key] = self.requests.labels(operation, str(outcome.status))
        sample.inc()
        if request is not None and request.upstream_ms is not None:
            self.upstream_latency.labels(operation).observe(request.upstream_ms / 1000)

    # -- exposition ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As an ASGI app: any GET gets the Prometheus text format."""
        if scope["type"] != "http":
            return
        body = generate_latest(self.registry)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


class MetricsAccessLog(AccessLog):
    """The access log, also counting every request (refusals included) into `metrics`."""

    def __init__(self, metrics: Metrics, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.metrics = metrics

    def record(self, scope: Scope, request: ProxyRequest | None, outcome: Outcome,
               started: float) -> None:
        self.metrics.record(request, outcome)
        super().record(scope, request, outcome, started)
