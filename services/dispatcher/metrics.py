"""The dispatcher's Prometheus metrics (prefix `loraroute_dispatch_`), on a registry passed in."""

from __future__ import annotations

import functools

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
        # Each label set's child, looked up once: `labels()` costs about a microsecond a call.
        self._requests = functools.lru_cache(maxsize=256)(self.requests.labels)
        self._seconds = functools.lru_cache(maxsize=4)(self.seconds.labels)
        self._attempts = functools.lru_cache(maxsize=256)(self.attempts.labels)

    def answered(self, status: int | str, stream: bool | str, seconds: float | None = None) -> None:
        """Count one request answered with `status` (`cancelled`: none), `seconds` after it
        arrived (None: not timed); `stream` says whether it streamed (`unknown`: not known)."""
        flag = stream if isinstance(stream, str) else "true" if stream else "false"
        self._requests(str(status), flag).inc()
        if seconds is not None:
            self._seconds(flag).observe(seconds)

    def attempted(self, endpoint: str, attempts: int) -> None:
        """Count `attempts` calls to `endpoint`."""
        self._attempts(endpoint).inc(attempts)
