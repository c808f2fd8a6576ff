"""The ingress's Prometheus metrics (prefix `loraroute_ingress_`), served on its own `/metrics`.

Built on a registry passed in, so tests and several apps in one process never collide. Labels
stay low-cardinality: the route is one of the ingress's fixed paths, the code an HTTP status,
the key an entry's name from the configured keys (never the key).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngressMetrics"]

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class IngressMetrics:
    """Requests by route and status, their time to answer (to the head for streams), requests
    open now, replies dropped because their request had already ended, and requests given up as
    lost."""

    def __init__(
        self,
        registry: CollectorRegistry,
        in_flight: Callable[[], float],
        late_replies: Callable[[], float],
        lost: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            "loraroute_ingress_requests_total",
            "Requests answered, by route and HTTP status.",
            ["route", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "loraroute_ingress_request_seconds",
            "Time from the request to its answer (streams: to the first byte), by route.",
            ["route"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        Gauge(
            "loraroute_ingress_in_flight",
            "Requests waiting for the pipeline's answer now (open reply mailboxes).",
            registry=registry,
        ).set_function(in_flight)
        Gauge(
            "loraroute_ingress_late_replies",
            "Replies dropped since start because their request had ended (deadline, client gone).",
            registry=registry,
        ).set_function(late_replies)
        Gauge(
            "loraroute_ingress_lost_requests",
            "Requests given up since start as lost work: no sign of life for liveness.stall_s "
            "(their worker died or hung) or the bus connection dropped.",
            registry=registry,
        ).set_function(lost)

        self.auth_refusals = Counter(
            "loraroute_ingress_auth_refusals_total",
            "Requests refused at the door: no key or an unknown one (401), or a model the key "
            "may not use (403).",
            ["reason"],
            registry=registry,
        )
        self.key_requests = Counter(
            "loraroute_ingress_key_requests_total",
            "Requests let in, by the name of their API key (only while keys are configured).",
            ["key"],
            registry=registry,
        )
        # Each label set's child, looked up once: `labels()` costs about a microsecond a call.
        self._requests = functools.lru_cache(maxsize=256)(self.requests.labels)
        self._seconds = functools.lru_cache(maxsize=64)(self.seconds.labels)

    def refused(self, reason: str) -> None:
        """Count one refusal at the door (`missing_key`, `wrong_key`, `model`)."""
        self.auth_refusals.labels(reason).inc()

    def let_in(self, key_name: str) -> None:
        """Count one request let in with the key named `key_name`."""
        self.key_requests.labels(key_name).inc()

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request."""
        self._requests(route, str(code)).inc()
        self._seconds(route).observe(seconds)
