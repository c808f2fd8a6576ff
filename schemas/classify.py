"""The classification API's HTTP bodies (`/api/v1/classify/intent`, `/api/v1/classify/batch`).

Request shapes follow the upstream router's API so its clients work unchanged. Responses keep its
field names but not its gaps: `probabilities` is the full distribution over the config's
categories when asked for (and `label_probabilities` the model's own, over all its labels),
and a text below the threshold reports `category: null` with
`routing_decision: "below_threshold"` and the `default_model` as `recommended_model`, which is
exactly what routing does with it.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "BatchItem",
    "BatchResponse",
    "BatchStatistics",
    "ClassifyBatchRequest",
    "ClassifyIntentRequest",
    "ClassifyOptions",
    "IntentClassification",
    "IntentResponse",
]


class ClassifyOptions(msgspec.Struct, kw_only=True):
    return_probabilities: bool = False


class ClassifyIntentRequest(msgspec.Struct, kw_only=True):
    """One text to classify."""

    text: str
    options: ClassifyOptions = msgspec.field(default_factory=ClassifyOptions)


class ClassifyBatchRequest(msgspec.Struct, kw_only=True):
    """Several texts; `task_type` other than `intent` is refused (no other task exists here)."""

    texts: list[str]
    task_type: str = "intent"
    options: ClassifyOptions = msgspec.field(default_factory=ClassifyOptions)


class IntentClassification(msgspec.Struct, kw_only=True):
    category: str | None
    """The config category, or null below the threshold."""
    confidence: float
    processing_time_ms: float
    label: str
    """The model's own top label (several labels may map to one category)."""
    truncated: bool = False


class IntentResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    classification: IntentClassification
    recommended_model: str
    routing_decision: str
    """`classified` or `below_threshold` (the request would go to `default_model`)."""
    probabilities: dict[str, float] | None = None
    label_probabilities: dict[str, float] | None = None
    """With `return_probabilities`: every model label's probability (the full distribution
    `probabilities` folds into categories; labels no category claims are only here)."""


class BatchItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    category: str | None
    confidence: float
    processing_time_ms: float
    label: str
    recommended_model: str
    routing_decision: str
    truncated: bool = False
    probabilities: dict[str, float] | None = None
    label_probabilities: dict[str, float] | None = None
    """As in `IntentResponse`."""


class BatchStatistics(msgspec.Struct, kw_only=True):
    category_distribution: dict[str, int]
    """Texts per category; below-threshold texts count under `null` -> key `"none"`."""
    avg_confidence: float
    low_confidence_count: int
    """Texts below the configured threshold (upstream counted below a fixed 0.7)."""


class BatchResponse(msgspec.Struct, kw_only=True):
    results: list[BatchItem]
    total_count: int
    processing_time_ms: float
    statistics: BatchStatistics
