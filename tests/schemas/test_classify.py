"""schemas/classify.py and the wire result: the label distribution is a new, optional field."""

from __future__ import annotations

import msgspec

from schemas.classify import BatchItem, IntentClassification, IntentResponse
from schemas.wire import ClassifyTextsResult, TextClassification, encoder, reply_decoder


def test_label_probabilities_are_last_optional_and_left_out_when_not_asked() -> None:
    assert TextClassification.__struct_fields__[-1] == "label_probabilities"
    assert IntentResponse.__struct_fields__[-1] == "label_probabilities"
    assert BatchItem.__struct_fields__[-1] == "label_probabilities"
    plain = IntentResponse(
        classification=IntentClassification(
            category=None, confidence=0.4, processing_time_ms=1.0, label="law"
        ),
        recommended_model="base",
        routing_decision="below_threshold",
    )
    assert "label_probabilities" not in msgspec.json.decode(msgspec.json.encode(plain))
    asked = msgspec.structs.replace(plain, label_probabilities={"law": 0.4, "other": 0.6})
    assert msgspec.json.decode(msgspec.json.encode(asked))["label_probabilities"] == {
        "law": 0.4,
        "other": 0.6,
    }


def test_a_result_from_a_classifier_without_the_field_still_decodes() -> None:
    result = ClassifyTextsResult(
        results=[TextClassification(category="legal", confidence=0.9, label="law")]
    )
    data = msgspec.json.decode(encoder.encode(result))
    del data["results"][0]["label_probabilities"]  # as an older classifier sends it
    decoded = reply_decoder.decode(msgspec.json.encode(data))
    assert isinstance(decoded, ClassifyTextsResult)
    assert decoded.results[0].label_probabilities is None
