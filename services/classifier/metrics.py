"""The classifier worker's Prometheus metrics (prefix `loraroute_classifier_`).

Built on a registry passed in, so tests and several workers in one process never collide.
Labels stay low-cardinality: categories and models come from the config, never from clients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["WorkerMetrics"]

# Batch sizes up to 1024 (`batching.max_batch_size`'s ceiling).
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)
_SECONDS_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WorkerMetrics:
    """Every metric the worker records, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queue_depth = Gauge(
            "loraroute_classifier_queue_depth",
            "Entries waiting in the batch queue, by lane (interactive, job).",
            ["lane"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "loraroute_classifier_batch_size",
            "Texts per batch run by the model, by lane (interactive, job): a batch holds one "
            "lane's entries only.",
            ["lane"],
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "loraroute_classifier_batch_tokens",
            "Tokens per batch: padded (longest x count, what the model computes) and real.",
            ["kind"],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "loraroute_classifier_stage_seconds",
            "Time per request in each stage: tokenize, queue, inference, total.",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.truncations = Counter(
            "loraroute_classifier_truncations_total",
            "Texts cut before classification: to routing.max_text_chars (chars) or to the "
            "model's max length (tokens).",
            ["kind"],
            registry=registry,
        )
        self.routed = Counter(
            "loraroute_routed_total",
            "Chat requests routed, by category (none below the threshold), model and reason.",
            ["category", "model", "reason"],
            registry=registry,
        )
        self.selected = Counter(
            "loraroute_route_selected_total",
            "Classified chat requests by category and the model chosen for it: with several "
            "entries sharing a category's top score (A/B), how the traffic splits.",
            ["category", "model"],
            registry=registry,
        )
        self.rejected = Counter(
            "loraroute_classifier_rejected_total",
            "Requests answered with an error, by kind (overloaded, expired, invalid, "
            "unknown_model, engine, no_dispatcher), or dropped from the queue because their "
            "client left (cancelled).",
            ["kind"],
            registry=registry,
        )
        self.decisions = Counter(
            "loraroute_classifier_decisions_total",
            "Texts the model classified, by path (chat: routed chat requests; api: texts of the "
            "classification API) and outcome (classified: a category at or above the threshold; "
            "below_threshold: no category or below it, so the default model). The share "
            "below_threshold / all is what the threshold sends to the default model.",
            ["path", "outcome"],
            registry=registry,
        )
        self.classified_texts = Counter(
            "loraroute_classifier_api_texts_total",
            "Texts classified for the classification API.",
            registry=registry,
        )
        # Each label set's child, looked up once: `labels()` costs about a microsecond a call.
        self._routed = functools.lru_cache(maxsize=1024)(self.routed.labels)
        self._selected = functools.lru_cache(maxsize=1024)(self.selected.labels)

    def count_routed(self, category: str | None, model: str, reason: str) -> None:
        """Count one routed chat request (category None: below the threshold, or not
        classified), and for a classified one the model chosen for its category."""
        self._routed(category or "none", model, reason).inc()
        if reason == "classified" and category is not None:
            self._selected(category, model).inc()

    def watch_spelling(self, totals: Callable[[], tuple[int, int]]) -> None:
        """Export the spelling corrector's running totals (`SpellingCorrector.totals`)."""
        self.registry.register(_SpellingWords(totals))


class _SpellingWords(Collector):
    """`loraroute_classifier_spelling_words_total{outcome}`, read from the corrector on scrape."""

    def __init__(self, totals: Callable[[], tuple[int, int]]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        corrected, unchecked = self._totals()
        family = CounterMetricFamily(
            "loraroute_classifier_spelling_words",
            "Misspelt words the classifier mended before reading a text (corrected), and "
            "unknown words it left as written because the text's lookup budget was spent "
            "(unchecked). vLLM always gets the text as sent.",
            labels=["outcome"],
        )
        family.add_metric(["corrected"], corrected)
        family.add_metric(["unchecked"], unchecked)
        yield family
