"""`services.classifier.route_chat`: a chat request forwarded at once, refused, or classified."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from schemas.config import Config
from schemas.errors import ErrorKind
from schemas.wire import RouteChat
from services.classifier.admission import Refusal
from services.classifier.engine import Classification
from services.classifier.labels import LabelMap
from services.classifier.route import ClassifyText, Router
from services.classifier.route_chat import Forward, classified, combine, take_chat
from services.classifier.work import ChatWork
from tests.services.classifier.fakes import LABELS
from tests.services.classifier.plain import body, classification, meta


def test_a_configured_model_passes_through_with_its_body(router: Router) -> None:
    raw = body("code", model="medical-lora", temperature=0.1)
    forward = take_chat(RouteChat(body=raw), router)
    assert isinstance(forward, Forward)
    assert forward.body is raw
    assert (forward.route.model, forward.route.reason) == ("medical-lora", "passthrough")
    assert forward.route.category is None


def test_an_unknown_model_is_refused_naming_the_parameter(router: Router) -> None:
    refusal = take_chat(RouteChat(body=body("code", model="no-such-model")), router)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason, refusal.param) == (
        ErrorKind.NOT_FOUND,
        "unknown_model",
        "model",
    )
    assert "no-such-model" in refusal.message


@pytest.mark.parametrize("raw", [b"[1, 2]", b'{"model": 3, "messages": []}'])
def test_a_body_that_is_no_chat_request_is_refused(raw: bytes, router: Router) -> None:
    refusal = take_chat(RouteChat(body=msgspec.Raw(raw)), router)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason) == (ErrorKind.VALIDATION, "invalid")
    assert refusal.message.startswith("invalid chat request: ")


def test_nothing_to_classify_takes_the_empty_route(router: Router, shipped_config: Config) -> None:
    forward = take_chat(RouteChat(body=body(None)), router)
    assert isinstance(forward, Forward)
    assert (forward.route.model, forward.route.reason) == (shipped_config.default_model, "empty")


def test_an_auto_model_asks_for_its_text_to_be_classified(router: Router) -> None:
    assert take_chat(RouteChat(body=body("code blood")), router) == [ClassifyText("code blood")]
    long = take_chat(RouteChat(body=body("law " * 10_000)), router)
    assert isinstance(long, list) and long[0].truncated


def _classified(work: ChatWork, router: Router, *parts: Classification) -> Forward:
    for index, part in enumerate(parts):
        assert work.fill(index, part) is (index == len(parts) - 1)
    return classified(work, router)


def _distribution(**probabilities: float) -> Classification:
    """A classification whose label distribution is `probabilities` (the rest: 0)."""
    label_probs = np.asarray([probabilities.get(label, 0.0) for label in LABELS], np.float32)
    k = int(label_probs.argmax())
    return Classification(
        category=LABELS[k],
        confidence=float(label_probs[k]),
        label=LABELS[k],
        label_confidence=float(label_probs[k]),
        probabilities={c: float(p) for c, p in zip(LABELS, label_probs, strict=True)},
        label_probabilities=label_probs,
        truncated=False,
        tokens=3,
        label_map=LabelMap.identity(LABELS),
    )


def test_a_classification_becomes_its_category_route(router: Router) -> None:
    raw = body("blood")
    work = ChatWork(meta(), "inbox.1", raw, False, 0.0)
    forward = _classified(work, router, classification("medical", 0.9))
    assert forward.body is raw
    route = forward.route
    assert (route.category, route.model, route.reason) == ("medical", "medical-lora", "classified")
    assert route.truncated is False


def test_below_the_threshold_goes_to_the_default_model(
    router: Router, shipped_config: Config
) -> None:
    work = ChatWork(meta(), "inbox.1", body("maybe"), False, 0.0)
    route = _classified(work, router, classification("technical", 0.4)).route
    assert (route.model, route.reason) == (shipped_config.default_model, "below_threshold")


@pytest.mark.parametrize(("chars", "tokens"), [(True, False), (False, True), (False, False)])
def test_either_truncation_marks_the_route(router: Router, chars: bool, tokens: bool) -> None:
    work = ChatWork(meta(), "inbox.1", body("code"), chars, 0.0)
    route = _classified(work, router, classification("technical", 0.9, truncated=tokens)).route
    assert route.truncated is (chars or tokens)


# The model's reading of a text with no topic: almost surely general.
NEUTRAL = np.asarray([0.01, 0.01, 0.01, 0.97], dtype=np.float32)


def test_a_topic_free_follow_up_inherits_the_earlier_turns_topic(router: Router) -> None:
    work = ChatWork(meta(), "inbox.1", body("and then?"), False, 0.0, weights=[1.0, 0.5])
    work.fill(0, _distribution(general=0.96, legal=0.02, medical=0.01, technical=0.01))
    assert work.fill(1, _distribution(legal=0.98, general=0.01, medical=0.005, technical=0.005))
    route = classified(work, router, NEUTRAL).route
    assert (route.category, route.model) == ("legal", "legal-lora")
    assert route.confidence is not None and route.confidence > router.threshold


def test_a_last_turn_with_its_own_topic_wins(router: Router) -> None:
    work = ChatWork(meta(), "inbox.1", body("x"), False, 0.0, weights=[1.0, 0.5, 0.25])
    work.fill(0, _distribution(technical=0.9, general=0.08, legal=0.01, medical=0.01))
    work.fill(1, _distribution(medical=0.95, general=0.03, legal=0.01, technical=0.01))
    assert work.fill(2, _distribution(medical=0.95, general=0.03, legal=0.01, technical=0.01))
    assert classified(work, router, NEUTRAL).route.category == "technical"


def test_combine_of_one_turn_is_that_turn() -> None:
    part = np.asarray([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert combine([part], [1.0], NEUTRAL) == pytest.approx(part, abs=1e-6)
    assert combine([part, NEUTRAL], [1.0, 0.5], NEUTRAL) == pytest.approx(part, abs=1e-6)
    mean = combine([part, NEUTRAL], [1.0, 1.0], None)
    assert mean == pytest.approx((part + NEUTRAL) / 2, abs=1e-6)
