from __future__ import annotations

import msgspec

from schemas.classify import BatchResponse, IntentResponse
from schemas.config import Config
from schemas.wire import ClassifyTextsResult, TextClassification
from services.ingress.classify_api import batch_body, intent_body, recommended_model

PROBS = {"technical": 0.05, "medical": 0.9, "legal": 0.03, "general": 0.02}


def test_recommended_model_follows_routing(config: Config) -> None:
    assert recommended_model(config, "medical") == "medical-lora"
    assert recommended_model(config, "general") == "llama2-7b"
    assert recommended_model(config, None) == config.default_model


def test_intent_reports_full_probabilities_when_asked(config: Config) -> None:
    reply = ClassifyTextsResult(
        results=[
            TextClassification(
                category="medical", confidence=0.9, label="health", probabilities=PROBS
            )
        ],
        processing_time_ms=3.0,
    )
    body = msgspec.json.decode(intent_body(config, reply, True), type=IntentResponse)
    assert body.classification.category == "medical"
    assert body.probabilities == PROBS
    assert body.recommended_model == "medical-lora"
    assert body.routing_decision == "classified"
    plain = msgspec.json.decode(intent_body(config, reply, False))
    assert "probabilities" not in plain


def test_below_threshold_is_null_category_and_default_model(config: Config) -> None:
    reply = ClassifyTextsResult(
        results=[TextClassification(category=None, confidence=0.3, label="other")]
    )
    body = msgspec.json.decode(intent_body(config, reply, False), type=IntentResponse)
    assert body.classification.category is None
    assert body.routing_decision == "below_threshold"
    assert body.recommended_model == config.default_model


def test_batch_statistics(config: Config) -> None:
    reply = ClassifyTextsResult(
        results=[
            TextClassification(category="medical", confidence=0.9, label="health"),
            TextClassification(category="medical", confidence=0.7, label="health"),
            TextClassification(category=None, confidence=0.2, label="other"),
        ],
        processing_time_ms=9.0,
    )
    body = msgspec.json.decode(batch_body(config, reply, False), type=BatchResponse)
    assert body.total_count == 3
    assert [r.category for r in body.results] == ["medical", "medical", None]
    assert body.results[0].processing_time_ms == 3.0
    assert body.statistics.category_distribution == {"medical": 2, "none": 1}
    assert body.statistics.low_confidence_count == 1
    assert abs(body.statistics.avg_confidence - 0.6) < 1e-9
