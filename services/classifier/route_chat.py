"""A chat request's route: at once for a named model or an empty text, else after classification.

`take_chat` reads the model and the text from the client's body. A configured model name passes
through, and a request with nothing to classify takes the empty-text route: both are forwarded
at once. Otherwise it returns the text to classify, and `classified` later turns the
classification into the route. The body itself is forwarded byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from schemas.errors import ErrorKind
from schemas.openai import ChatRequestView
from schemas.wire import Route, RouteChat
from services.classifier.admission import Refusal
from services.classifier.route import ClassifyText, Router, UnknownModelError

if TYPE_CHECKING:
    from services.classifier.engine import Classification
    from services.classifier.work import ChatWork

__all__ = ["Forward", "classified", "take_chat"]

_view_decoder = msgspec.json.Decoder(ChatRequestView)


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the client's `body` to the dispatcher of `route.base_model`, with `route`
    (decided under the live config revision `revision`)."""

    route: Route
    body: msgspec.Raw
    revision: int = 0


def take_chat(message: RouteChat, router: Router) -> Forward | Refusal | ClassifyText:
    """What `message` needs: a `Forward` now, a `Refusal`, or the text to classify first."""
    try:
        view = _view_decoder.decode(message.body)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        return Refusal(ErrorKind.VALIDATION, f"invalid chat request: {error}", "invalid")
    try:
        route = router.passthrough(view.model)
    except UnknownModelError as error:
        return Refusal(ErrorKind.NOT_FOUND, str(error), "unknown_model", param="model")
    if route is not None:
        return Forward(route, message.body, router.revision)
    text = router.text_of(view)
    if not text.text:
        return Forward(router.decide(None, 0.0, empty=True), message.body, router.revision)
    return text


def classified(work: ChatWork, classification: Classification, router: Router) -> Forward:
    """The queued chat request `work`, forwarded with the route for its classification.

    `work` is routed by the router (and the label map) of the config revision it arrived
    under, when it recorded them, else by `router`."""
    router = work.router or router
    category, confidence = classification.category, classification.confidence
    if work.label_map is not None and classification.label_map is not work.label_map:
        # A config swap changed the categories while the request waited: fold its labels as
        # the revision it arrived under does.
        category, confidence = work.label_map.best(classification.label_probabilities)
    route = router.decide(
        category,
        confidence,
        truncated=work.truncated_chars or classification.truncated,
        key=work.route_key or work.meta.request_id,
    )
    return Forward(route, work.body, router.revision)
