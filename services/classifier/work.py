"""The work the classifier worker queues, and how a classification becomes an answer.

Plain data and functions: `ChatWork` (one chat request to route) and `TextsWork` (one call of
the classification API, several texts) ride in the batch queue as `Item`s; `text_result` turns
one classification into the API's `TextClassification`, applying the routing threshold so that
the API and the routing path agree on every text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from schemas.wire import TextClassification
from services.common.bus import RequestMeta

if TYPE_CHECKING:
    from services.classifier.engine import Classification
    from services.classifier.labels import LabelMap
    from services.classifier.route import Router
    from services.classifier.tokens import Encoded

__all__ = ["ChatWork", "Item", "TextsWork", "empty_result", "text_result"]


@dataclass(slots=True)
class ChatWork:
    """A chat request waiting for its category: where to answer, and the body to forward."""

    meta: RequestMeta
    reply: str
    body: msgspec.Raw
    truncated_chars: bool
    received: float
    """`time.perf_counter()` when the message arrived."""
    router: Router | None = None
    label_map: LabelMap | None = None
    """The config revision's router and label map when the request arrived: it is routed by
    them even when a newer revision is swapped in while it waits (None: the worker's current)."""
    route_key: str | None = None
    """What picks its A/B variant (`Router.decide`'s `key`)."""
    weights: list[float] = field(default_factory=lambda: [1.0])
    """One weight per text classified: the last user turn first, then earlier turns."""
    parts: list[Classification | None] = field(init=False)
    failed: bool = False
    """Set once an error reply was sent, so the results of its other turns are dropped."""

    def __post_init__(self) -> None:
        self.parts = [None] * len(self.weights)

    def fill(self, index: int, result: Classification) -> bool:
        """Store the result of turn `index`; True when that was the last one missing."""
        self.parts[index] = result
        return all(p is not None for p in self.parts)


@dataclass(slots=True)
class TextsWork:
    """A classification API call: one result slot per text, answered when all are filled."""

    meta: RequestMeta
    reply: str
    return_probabilities: bool
    received: float
    results: list[TextClassification | None]
    truncated_chars: list[bool]
    remaining: int = field(init=False)
    failed: bool = False
    """Set once an error reply was sent, so the other texts' results are dropped."""

    def __post_init__(self) -> None:
        self.remaining = sum(r is None for r in self.results)

    def fill(self, index: int, result: TextClassification) -> bool:
        """Store one result; True when that was the last one missing."""
        self.results[index] = result
        self.remaining -= 1
        return self.remaining == 0


@dataclass(slots=True)
class Item:
    """A queue entry's payload: the work, the index of its text, and its tokens."""

    work: ChatWork | TextsWork
    index: int
    encoded: Encoded


def text_result(
    classification: Classification,
    *,
    threshold: float,
    truncated_chars: bool,
    return_probabilities: bool,
) -> TextClassification:
    """The API result for one text: `category` None below `threshold`, like routing; with
    `return_probabilities`, the category and the model label distributions."""
    below = classification.category is None or classification.confidence < threshold
    labels = None
    if return_probabilities and classification.label_map is not None:
        labels = {
            label: float(p)
            for label, p in zip(
                classification.label_map.labels, classification.label_probabilities, strict=True
            )
        }
    return TextClassification(
        category=None if below else classification.category,
        confidence=classification.confidence,
        label=classification.label,
        probabilities=dict(classification.probabilities) if return_probabilities else None,
        truncated=truncated_chars or classification.truncated,
        label_probabilities=labels,
    )


def empty_result(return_probabilities: bool) -> TextClassification:
    """The API result for an empty text: no category, nothing classified."""
    return TextClassification(
        category=None,
        confidence=0.0,
        label="",
        probabilities={} if return_probabilities else None,
        label_probabilities={} if return_probabilities else None,
    )
