"""Relays a streamed answer to the client: vLLM's SSE bytes verbatim, failures in-band.

After the head message the HTTP status (200) and headers are already sent, so every failure from
then on must travel inside the stream, the way vLLM reports its own: one
`data: {"error": {...}}` event, then `data: [DONE]`. That covers an upstream error reported by the
dispatcher (`ReplyEnd.error`), a lost or reordered chunk (sequence gap), a chunk count that does
not match the end marker, an unexpected message, and the deadline.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.wire import ReplyEnd, ReplyError, ReplyMessage, StreamChunk, encoder
from services.common.log import get_logger

__all__ = ["DONE", "MEDIA_TYPE", "error_event", "relay"]

_log = get_logger()

MEDIA_TYPE = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"

#: `receive(timeout_s)` of a mailbox: the next reply, or `TimeoutError`.
Receive = Callable[[float], Awaitable[object]]


def error_event(error: ErrorResponse) -> bytes:
    """One SSE event carrying `error` in vLLM's envelope."""
    return b"data: " + encoder.encode(error) + b"\n\n"


def _fail(kind: ErrorKind, message: str) -> bytes:
    return error_event(error_response(kind, message)) + DONE


async def relay(
    receive: Receive, deadline: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    """Yield the stream's bytes after its head, until the end marker or a failure.

    `deadline` is on `clock`'s scale. Chunk payloads are yielded exactly as received. Every way
    out of the loop yields a final, well-formed ending, so the client never sees a stream that
    just stops, even when something unforeseen raises (logged, and answered in-band as a 500).
    """
    try:
        async for data in _relay(receive, deadline, clock):
            yield data
    except Exception as error:  # the stream's outermost guard: the client still gets an ending
        _log.error("stream_failed", error=repr(error))
        yield _fail(ErrorKind.INTERNAL, "Internal server error while streaming.")


async def _relay(
    receive: Receive, deadline: float, clock: Callable[[], float]
) -> AsyncIterator[bytes]:
    expected = 0
    while True:
        try:
            message: ReplyMessage | object = await receive(deadline - clock())
        except TimeoutError:
            yield _fail(ErrorKind.TIMEOUT, "The request's deadline passed while streaming.")
            return
        if isinstance(message, StreamChunk):
            if message.seq != expected:
                yield _fail(
                    ErrorKind.BAD_GATEWAY,
                    f"Stream corrupted: chunk {message.seq} arrived where {expected} was due.",
                )
                return
            expected += 1
            yield message.data
        elif isinstance(message, ReplyEnd):
            if message.error is not None:
                yield error_event(message.error) + DONE
            elif message.chunks != expected:
                yield _fail(
                    ErrorKind.BAD_GATEWAY,
                    f"Stream incomplete: {expected} of {message.chunks} chunks arrived.",
                )
            return
        elif isinstance(message, ReplyError):
            yield error_event(message.error) + DONE
            return
        else:
            _log.warning("stream_unexpected_reply", kind=type(message).__name__)
            yield _fail(ErrorKind.BAD_GATEWAY, "Stream broken: the pipeline answered out of order.")
            return
