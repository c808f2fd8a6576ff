"""The jobs worker's Prometheus metrics (prefix `loraroute_jobs_`), on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["JobsMetrics"]

_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class JobsMetrics:
    """Every metric the jobs worker records, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lines = Counter(
            "loraroute_jobs_lines_total",
            "Job line deliveries by outcome: completed (status 200 stored), failed (another "
            "result stored), duplicate (a result was stored already), retried (redelivered "
            "later), waiting (tried again in the same delivery while the pipeline was down), "
            "dead (sent to the dead-letter stream), lost (a run given up after "
            "liveness.stall_s of silence: its worker died or the bus dropped its answer).",
            ["outcome"],
            registry=registry,
        )
        self.line_seconds = Histogram(
            "loraroute_jobs_line_seconds",
            "Time from receiving a job line to settling it (ack, nak or term).",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "loraroute_jobs_lines_in_flight",
            "Job lines this worker is running now (at most jobs.concurrency).",
            registry=registry,
        )
        self.batches = Counter(
            "loraroute_jobs_batches_total",
            "Batches this worker started (in_progress, failed) or finalized (completed, "
            "expired, cancelled), by the state it stored.",
            ["status"],
            registry=registry,
        )
