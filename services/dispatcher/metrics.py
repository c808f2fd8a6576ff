"""The dispatcher's Prometheus metrics (prefix `loraroute_dispatch_`), on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["DispatcherMetrics"]

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class DispatcherMetrics:
    """Every metric the dispatcher records, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "loraroute_dispatch_requests_total",
            "Requests answered, by final status and whether they streamed.",
            ["status", "stream"],
            registry=registry,
        )
        self.attempts = Counter(
            "loraroute_dispatch_attempts_total",
            "Calls to vLLM endpoints (a request retried elsewhere counts twice).",
            ["endpoint"],
            registry=registry,
        )
        self.seconds = Histogram(
            "loraroute_dispatch_seconds",
            "Time from receiving a routed request to its final answer.",
            ["stream"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.stream_errors = Counter(
            "loraroute_dispatch_stream_errors_total",
            "Streams that failed after their first byte (sent in-band to the client).",
            registry=registry,
        )
