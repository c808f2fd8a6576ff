"""The Prometheus metrics the mock exposes on ``/metrics``, named and labelled as vLLM's.

A subset of vLLM's: the scheduler gauges routers read (``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``), ``vllm:lora_requests_info`` (a gauge whose
value is the update time and whose labels list the running and waiting adapters; like vLLM, an old
label set stays in the output, so readers take the sample with the largest value), token and
request counters, and the latency histograms.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from services.mockvllm.engine import Engine

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so several mock servers can live in one process (tests)."""

    def __init__(self, model_name: str, max_loras: int, lora_enabled: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"engine": "0", "model_name": model_name}
        names = list(labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=self.registry)

        self._running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        ).labels(**labels)
        self._waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        ).labels(**labels)
        self._kv = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        ).labels(**labels)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=self.registry,
        )
        for reason in ("stop", "length", "abort", "error"):
            self._success.labels(**labels, finished_reason=reason)
        self._labels = labels

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, names, buckets=_LATENCY_BUCKETS, registry=self.registry)

        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds."
        ).labels(**labels)
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."
        ).labels(**labels)
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
        ).labels(**labels)
        self._max_loras = max_loras
        self._lora_info: Gauge | None = None
        if lora_enabled:
            self._lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
                registry=self.registry,
            )

    def finished(self, reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=reason).inc()

    def engine_changed(self, engine: Engine) -> None:
        """Refresh the scheduler gauges; the engine calls this after every scheduling step."""
        self._running.set(engine.num_running)
        self._waiting.set(engine.num_waiting)
        self._kv.set(min(1.0, engine.num_running / max(1, engine.max_num_seqs)))
        if self._lora_info is not None:
            self._lora_info.labels(
                max_lora=str(self._max_loras),
                running_lora_adapters=",".join(engine.running_adapters),
                waiting_lora_adapters=",".join(engine.waiting_adapters),
            ).set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
