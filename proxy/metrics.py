"""Prometheus metrics for operators, in a registry of the proxy's own (nothing global).

A `Metrics` is itself an ASGI app: `/metrics` serves it; mount it yourself when the proxy is
embedded. With several worker processes each has its own registry: scrape each worker.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from .asgi_types import Receive, Scope, Send
from .context import Outcome, ProxyRequest
from .observability import AccessLog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Metrics", "MetricsAccessLog"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# name, help, label names: counters keyed by label values
_COUNTERS = {
    "requests": ("flux_proxy_requests", "Proxied requests by operation and answered status.",
                 ("operation", "status")),
    "refusals": ("flux_proxy_rate_limit_refusals",
                 "Requests refused by a budget: exceeded (429) or store unavailable (503).",
                 ("budget", "reason")),
    "images": ("flux_proxy_images", "Images requested by upstream-accepted requests.",
               ("endpoint",)),
    "cost": ("flux_proxy_cost_units", "Cost units of upstream-accepted requests.",
             ("endpoint",)),
}


class _Series:
    """One label set's value (or histogram buckets) and when it first appeared."""

    __slots__ = ("buckets", "created", "value")

    def __init__(self, histogram: bool = False) -> None:
        self.value = 0.0  # a counter's value, or a histogram's sum
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1) if histogram else []
        self.created = time.time()


class Metrics:
    """The proxy's counters, gauges and histogram, plus the ASGI app that serves them.

    Values are plain Python numbers updated on the request path; `prometheus_client` is only
    imported to format them when `/metrics` is first scraped (it costs ~15 ms of cold start).
    """

    def __init__(self) -> None:
        # label values -> series; a request's status stays an int until rendered
        self.counters: dict[str, dict[tuple[str | int, ...], _Series]] = {
            k: {} for k in _COUNTERS}
        self.latency: dict[str, _Series] = {}  # by operation
        self._used: dict[str, tuple[_Series, _Series]] = {}  # by endpoint: images, cost
        self.in_flight = 0
        self.open_streams = 0
        self._registry: CollectorRegistry | None = None

    def _series(self, counter: str, labels: tuple[str | int, ...]) -> _Series:
        series = self.counters[counter].get(labels)
        if series is None:
            series = self.counters[counter][labels] = _Series()
        return series

    def _add(self, counter: str, labels: tuple[str | int, ...], amount: float = 1.0) -> None:
        # (`_series` inline: `record` calls this for every request)
        series = self.counters[counter].get(labels)
        if series is None:
            series = self.counters[counter][labels] = _Series()
        series.value += amount

    # -- hooks ---------------------------------------------------------------------------

    def track(self, request: ProxyRequest) -> None:
        """Last stage: the request is admitted and now in flight until it settles."""
        self.in_flight += 1
        if request.target.streaming:
            self.open_streams += 1
        request.settle_hooks.append(self._settled)

    def _settled(self, request: ProxyRequest, outcome: Outcome) -> None:
        self.in_flight -= 1
        if request.target.streaming:
            self.open_streams -= 1

    def refused(self, budget: str, reason: str) -> None:
        self._add("refusals", (budget, reason))

    def used(self, request: ProxyRequest, images: int, cost: float) -> None:
        target = request.target
        endpoint = target.endpoint_id or target.app_id or ""
        pair = self._used.get(endpoint)  # (one lookup per billed request, not four)
        if pair is None:
            pair = self._used[endpoint] = (self._series("images", (endpoint,)),
                                           self._series("cost", (endpoint,)))
        pair[0].value += images
        pair[1].value += cost

    def record(self, request: ProxyRequest | None, outcome: Outcome) -> None:
        operation = request.target.operation.value if request is not None else "invalid"
        self._add("requests", (operation, outcome.status))
        if request is not None and request.upstream_ms is not None:
            series = self.latency.get(operation)
            if series is None:
                series = self.latency[operation] = _Series(histogram=True)
            seconds = request.upstream_ms / 1000
            series.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            series.value += seconds

    # -- exposition ----------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """prometheus_client's custom-collector protocol: the current values as families."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Sample

        yield self._counter(CounterMetricFamily, "requests")
        latency = HistogramMetricFamily(
            "flux_proxy_upstream_latency_seconds",
            "Time until the upstream's response head arrived.", labels=("operation",))
        for operation, series in self.latency.items():
            total, cumulative = 0, []
            for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), series.buckets,
                                    strict=True):
                total += count
                cumulative.append((_bound(bound), float(total)))
            latency.add_metric((operation,), cumulative, series.value)
            latency.samples.append(Sample(f"{latency.name}_created", {"operation": operation},
                                          series.created))
        yield latency
        yield self._counter(CounterMetricFamily, "refusals")
        yield GaugeMetricFamily("flux_proxy_in_flight_requests",
                                "Admitted requests not yet answered.", value=self.in_flight)
        yield GaugeMetricFamily("flux_proxy_open_streams",
                                "Streaming requests (run streams, status streams) open.",
                                value=self.open_streams)
        yield self._counter(CounterMetricFamily, "images")
        yield self._counter(CounterMetricFamily, "cost")

    def _counter(self, family_type: Any, key: str) -> Any:
        name, doc, labels = _COUNTERS[key]
        family = family_type(name, doc, labels=labels)
        for values, series in self.counters[key].items():
            family.add_metric([str(v) for v in values], series.value, series.created)
        return family

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(self)  # type: ignore[arg-type]
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As an ASGI app: any GET gets the Prometheus text format."""
        if scope["type"] != "http":
            return
        body, content_type = self.render()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


def _bound(value: float) -> str:
    """A bucket bound as prometheus_client writes it: 1 -> "1.0", inf -> "+Inf"."""
    return "+Inf" if value == float("inf") else repr(float(value))


class MetricsAccessLog(AccessLog):
    """The access log, also counting every request (refusals included) into `metrics`."""

    def __init__(self, metrics: Metrics, enabled: bool = True, stream: TextIO | None = None
                 ) -> None:
        super().__init__(enabled, stream=stream)
        self.metrics = metrics

    def record(self, scope: Scope, request: ProxyRequest | None, outcome: Outcome,
               started: float) -> None:
        self.metrics.record(request, outcome)
        super().record(scope, request, outcome, started)
