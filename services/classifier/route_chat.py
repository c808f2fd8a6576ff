"""A chat request's route: at once for a named model or an empty text, else after classification.

`take_chat` reads the model and the text from the client's body. A configured model name passes
through, and a request with nothing to classify takes the empty-text route: both are forwarded
at once. An auto model's text is tokenized and queued; `classified` turns its classification
into the route it is forwarded with. The body itself is forwarded byte for byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from schemas.errors import ErrorKind
from schemas.openai import ChatRequestView
from schemas.wire import Route, RouteChat
from services.classifier.admission import Refusal
from services.classifier.route import Router, UnknownModelError
from services.classifier.work import ChatWork, Item

if TYPE_CHECKING:
    from services.classifier.engine import Classification
    from services.classifier.metrics import WorkerMetrics
    from services.classifier.tokens import Tokenizer
    from services.common.bus import RequestMeta

__all__ = ["Forward", "classified", "take_chat"]

_view_decoder = msgspec.json.Decoder(ChatRequestView)


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the client's `body` to the dispatcher of `route.base_model`, with `route`."""

    route: Route
    body: msgspec.Raw


def take_chat(
    message: RouteChat,
    meta: RequestMeta,
    reply: str,
    received: float,
    *,
    router: Router,
    tokenizer: Tokenizer,
    metrics: WorkerMetrics,
) -> Forward | Refusal | list[Item]:
    """What `message` needs: a `Forward` now, a `Refusal`, or the one `Item` to queue for
    classification (answered later at `reply`). `received` is its `time.perf_counter()`."""
    try:
        view = _view_decoder.decode(message.body)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        return Refusal(ErrorKind.VALIDATION, f"invalid chat request: {error}", "invalid")
    try:
        route = router.passthrough(view.model)
    except UnknownModelError as error:
        return Refusal(ErrorKind.NOT_FOUND, str(error), "unknown_model", param="model")
    if route is not None:
        return Forward(route, message.body)
    text = router.text_of(view)
    if text.truncated:
        metrics.truncations.labels("chars").inc()
    if not text.text:
        return Forward(router.decide(None, 0.0, empty=True), message.body)
    encoded = tokenizer.encode([text.text])
    metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - received)
    work = ChatWork(meta, reply, message.body, text.truncated, received)
    return [Item(work, 0, encoded)]


def classified(work: ChatWork, classification: Classification, router: Router) -> Forward:
    """The queued chat request `work`, forwarded with the route for its classification."""
    route = router.decide(
        classification.category,
        classification.confidence,
        truncated=work.truncated_chars or classification.truncated,
    )
    return Forward(route, work.body)
