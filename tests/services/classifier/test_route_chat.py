"""`services.classifier.route_chat`: a chat request forwarded at once, refused, or classified."""

from __future__ import annotations

import msgspec
import pytest

from schemas.config import Config
from schemas.errors import ErrorKind
from schemas.wire import RouteChat
from services.classifier.admission import Refusal
from services.classifier.route import ClassifyText, Router
from services.classifier.route_chat import Forward, classified, take_chat
from services.classifier.work import ChatWork
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
    assert take_chat(RouteChat(body=body("code blood")), router) == ClassifyText("code blood")
    long = take_chat(RouteChat(body=body("law " * 10_000)), router)
    assert isinstance(long, ClassifyText) and long.truncated


def test_a_classification_becomes_its_category_route(router: Router) -> None:
    raw = body("blood")
    work = ChatWork(meta(), "inbox.1", raw, False, 0.0)
    forward = classified(work, classification("medical", 0.9), router)
    assert forward.body is raw
    route = forward.route
    assert (route.category, route.model, route.reason) == ("medical", "medical-lora", "classified")
    assert route.truncated is False


def test_below_the_threshold_goes_to_the_default_model(
    router: Router, shipped_config: Config
) -> None:
    work = ChatWork(meta(), "inbox.1", body("maybe"), False, 0.0)
    route = classified(work, classification("technical", 0.4), router).route
    assert (route.model, route.reason) == (shipped_config.default_model, "below_threshold")


@pytest.mark.parametrize(("chars", "tokens"), [(True, False), (False, True), (False, False)])
def test_either_truncation_marks_the_route(router: Router, chars: bool, tokens: bool) -> None:
    work = ChatWork(meta(), "inbox.1", body("code"), chars, 0.0)
    route = classified(work, classification("technical", 0.9, truncated=tokens), router).route
    assert route.truncated is (chars or tokens)
