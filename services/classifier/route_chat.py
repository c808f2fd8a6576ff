"""A chat request's route: at once for a named model or an empty text, else after classification.

`take_chat` reads the model and the text from the client's body. A configured model name passes
through, and a request with nothing to classify takes the empty-text route: both are forwarded
at once. Otherwise it returns the texts to classify (the last user turn and earlier ones, see
`Router.turns_of`), and `classified` later turns their classifications into the route. The
body itself is forwarded byte for byte.

`combine` weighs the turns as evidence against what the model reads in a text with no topic
(`neutral`, `Engine.neutral_probabilities`): each turn's log-probabilities less the neutral
ones, times the turn's weight, added to the neutral log-probabilities. A follow-up without
topic words reads like the neutral text, adds nothing, and the earlier turns decide; a last
turn with a topic of its own outweighs the earlier ones (weight 1 against `history_weight`).
Plain averaging of the distributions cannot do both: a topic-free follow-up is read as
`general` with high confidence and outvotes the history (see docs/benchmarks.md,
"Multi-turn conversations").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import numpy.typing as npt

from schemas.errors import ErrorKind
from schemas.openai import ChatRequestView
from schemas.wire import Route, RouteChat
from services.classifier.admission import Refusal
from services.classifier.route import ClassifyText, Router, UnknownModelError

if TYPE_CHECKING:
    from services.classifier.work import ChatWork

__all__ = ["Forward", "classified", "combine", "take_chat"]

#: Keeps log() finite for labels the model gives (almost) nothing.
_FLOOR = 1e-6

_view_decoder = msgspec.json.Decoder(ChatRequestView)


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the client's `body` to the dispatcher of `route.base_model`, with `route`
    (decided under the live config revision `revision`)."""

    route: Route
    body: msgspec.Raw
    revision: int = 0


def take_chat(message: RouteChat, router: Router) -> Forward | Refusal | list[ClassifyText]:
    """What `message` needs: a `Forward` now, a `Refusal`, or the texts to classify first."""
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
    turns = router.turns_of(view)
    if not turns[0].text:
        return Forward(router.decide(None, 0.0, empty=True), message.body, router.revision)
    return turns


def combine(
    parts: Sequence[npt.NDArray[np.float32]],
    weights: Sequence[float],
    neutral: npt.NDArray[np.float32] | None,
) -> npt.NDArray[np.float32]:
    """The label distribution of a conversation from its turns' (`parts`, last turn first).

    `neutral` None (no reading of a topic-free text) falls back to the weighted mean."""
    if neutral is None:
        mixed = sum(w * p.astype(np.float64) for w, p in zip(weights, parts, strict=True))
        return np.asarray(mixed / sum(weights), dtype=np.float32)
    base = np.log(np.maximum(neutral.astype(np.float64), _FLOOR))
    logits = base.copy()
    for weight, part in zip(weights, parts, strict=True):
        logits += weight * (np.log(np.maximum(part.astype(np.float64), _FLOOR)) - base)
    logits -= logits.max()
    out = np.exp(logits)
    return np.asarray(out / out.sum(), dtype=np.float32)


def classified(
    work: ChatWork, router: Router, neutral: npt.NDArray[np.float32] | None = None
) -> Forward:
    """The queued chat request `work`, all of its turns classified (`work.parts`), forwarded
    with the route for their combination (`combine`).

    `work` is routed by the router (and the label map) of the config revision it arrived
    under, when it recorded them, else by `router`."""
    router = work.router or router
    parts = [p for p in work.parts if p is not None]
    first = parts[0]
    category, confidence = first.category, first.confidence
    label_map = work.label_map or first.label_map
    if len(parts) > 1 and label_map is not None:
        mixed = combine([p.label_probabilities for p in parts], work.weights, neutral)
        category, confidence = label_map.best(mixed)
    elif work.label_map is not None and first.label_map is not work.label_map:
        # A config swap changed the categories while the request waited: fold its labels as
        # the revision it arrived under does.
        category, confidence = work.label_map.best(first.label_probabilities)
    route = router.decide(
        category,
        confidence,
        truncated=work.truncated_chars or any(p.truncated for p in parts),
        key=work.route_key or work.meta.request_id,
    )
    return Forward(route, work.body, router.revision)
