"""Whether a message on the classify subject gets in: readable, in time, and room in the queue.

A request that does not get in is answered with a `Refusal`, a plain value the handler turns
into a `ReplyError` (and counts under its `reason`). A request is queued whole or not at all:
beyond its lane's bound (`batching.max_queue` interactive, `batching.max_job_queue` for job
lines) it is refused at once as overloaded, never queued without limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from schemas.errors import ErrorKind
from schemas.wire import ClassifyMessage, classify_decoder
from services.classifier.batch_queue import Entry, Lane

if TYPE_CHECKING:
    from services.classifier.batcher import Batcher
    from services.classifier.work import Item
    from services.common.bus import RequestMeta

__all__ = ["OVERLOADED", "Refusal", "admit", "read"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is answered with an error: the kind and message the requester gets, the
    `param` it names, and the `reason` label of the `rejected` metric."""

    kind: ErrorKind
    message: str
    reason: str
    param: str | None = None


OVERLOADED = Refusal(
    ErrorKind.OVERLOADED, "The classifier is overloaded; please retry later.", "overloaded"
)
#: A bug or a failed publish in the classifier: the details are in its log, never in the answer.
INTERNAL_ERROR = Refusal(ErrorKind.INTERNAL, "Internal error in the classifier.", "engine")


def read(data: bytes, meta: RequestMeta) -> ClassifyMessage | Refusal:
    """The message in `data`, or a `Refusal` when it does not decode or its deadline passed."""
    try:
        message = classify_decoder.decode(data)
    except msgspec.ValidationError as error:
        return Refusal(ErrorKind.VALIDATION, f"invalid message: {error}", "invalid")
    except msgspec.DecodeError as error:
        return Refusal(ErrorKind.VALIDATION, f"invalid JSON: {error}", "invalid")
    if meta.expired():
        return Refusal(ErrorKind.TIMEOUT, "deadline passed before classification", "expired")
    return message


def admit(
    batcher: Batcher[Item, Any, Any],
    items: Sequence[Item],
    meta: RequestMeta,
    lane: Lane = "interactive",
) -> bool:
    """Queue all of `items` in `lane` or none of them (a request is refused whole); False when
    the lane has no room for all of them, or the batcher is draining. Each entry carries the
    request's deadline, so the queue drops it, rather than classify it, once nobody waits."""
    if batcher.queue.room(lane) < len(items):
        return False
    now = time.monotonic()
    left = meta.remaining_s()
    deadline = None if left is None else now + left
    for item in items:
        entry = Entry(
            tokens=int(item.encoded.lengths[0]),
            arrival=now,
            payload=item,
            deadline=deadline,
            lane=lane,
        )
        if not batcher.submit(entry):
            # Only while draining; the capacity was checked above.
            return False
    return True
