"""Bodies of the classification API, built from the classifier's `ClassifyTextsResult`.

The classifier has already applied the threshold (`category` is None below it). The model
recommended for a category is the one routing would pick first: its highest-scoring
`model_scores` entry, the adapter when it names one; no category means `default_model`.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from schemas.classify import (
    BatchItem,
    BatchResponse,
    BatchStatistics,
    IntentClassification,
    IntentResponse,
)
from schemas.config import Config
from schemas.wire import ClassifyTextsResult, TextClassification

__all__ = ["batch_body", "intent_body", "recommended_model"]


def recommended_model(config: Config, category: str | None) -> str:
    """The model routing sends a text of `category` to (`default_model` for None or a category
    without candidates)."""
    for entry in config.categories:
        if entry.name == category and entry.model_scores:
            best = max(entry.model_scores, key=lambda score: score.score)
            return best.lora_name or best.model
    return config.default_model


def _decision(result: TextClassification) -> str:
    return "classified" if result.category is not None else "below_threshold"


def intent_body(config: Config, reply: ClassifyTextsResult, with_probabilities: bool) -> bytes:
    """`/api/v1/classify/intent` response for a one-text reply."""
    result = reply.results[0]
    return msgspec.json.encode(
        IntentResponse(
            classification=IntentClassification(
                category=result.category,
                confidence=result.confidence,
                processing_time_ms=reply.processing_time_ms,
                label=result.label,
                truncated=result.truncated,
            ),
            recommended_model=recommended_model(config, result.category),
            routing_decision=_decision(result),
            probabilities=result.probabilities if with_probabilities else None,
            label_probabilities=result.label_probabilities if with_probabilities else None,
        )
    )


def batch_body(config: Config, reply: ClassifyTextsResult, with_probabilities: bool) -> bytes:
    """`/api/v1/classify/batch` response, with per-text results in input order and statistics."""
    results = reply.results
    count = len(results)
    per_text = reply.processing_time_ms / count if count else 0.0
    items = [
        BatchItem(
            category=r.category,
            confidence=r.confidence,
            processing_time_ms=per_text,
            label=r.label,
            recommended_model=recommended_model(config, r.category),
            routing_decision=_decision(r),
            truncated=r.truncated,
            probabilities=r.probabilities if with_probabilities else None,
            label_probabilities=r.label_probabilities if with_probabilities else None,
        )
        for r in results
    ]
    distribution = Counter(r.category or "none" for r in results)
    return msgspec.json.encode(
        BatchResponse(
            results=items,
            total_count=count,
            processing_time_ms=reply.processing_time_ms,
            statistics=BatchStatistics(
                category_distribution=dict(distribution),
                avg_confidence=sum(r.confidence for r in results) / count if count else 0.0,
                low_confidence_count=sum(1 for r in results if r.category is None),
            ),
        )
    )
