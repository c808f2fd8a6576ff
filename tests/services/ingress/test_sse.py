from __future__ import annotations

import json
from collections.abc import Sequence

from schemas.errors import ErrorKind, error_response
from schemas.wire import ReplyEnd, ReplyError, ReplyResponse, StreamChunk
from services.ingress.sse import DONE, relay

FRAMES = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]


def _receiver(messages: Sequence[object]):  # type: ignore[no-untyped-def]
    pending = list(messages)

    async def receive(timeout_s: float) -> object:
        if not pending:
            raise TimeoutError
        return pending.pop(0)

    return receive


async def _collect(messages: Sequence[object]) -> bytes:
    return b"".join([c async for c in relay(_receiver(messages), deadline=1e18)])


def _last_error(stream: bytes) -> dict[str, object]:
    events = [e for e in stream.split(b"\n\n") if e.startswith(b"data: {")]
    error: dict[str, object] = json.loads(events[-1][len(b"data: ") :])["error"]
    return error


async def test_chunks_pass_verbatim() -> None:
    chunks = [StreamChunk(seq=i, data=f) for i, f in enumerate(FRAMES)]
    assert await _collect([*chunks, ReplyEnd(chunks=3)]) == b"".join(FRAMES)


async def test_sequence_gap_ends_with_error_and_done() -> None:
    out = await _collect([StreamChunk(seq=0, data=FRAMES[0]), StreamChunk(seq=2, data=FRAMES[1])])
    assert out.startswith(FRAMES[0]) and out.endswith(DONE)
    assert FRAMES[1] not in out
    assert _last_error(out)["type"] == "BadGatewayError"


async def test_missing_chunks_at_end_are_an_error() -> None:
    out = await _collect([StreamChunk(seq=0, data=FRAMES[0]), ReplyEnd(chunks=2)])
    assert out.endswith(DONE) and _last_error(out)["code"] == 502


async def test_upstream_error_goes_in_band() -> None:
    error = error_response(ErrorKind.INTERNAL, "Internal server error")
    out = await _collect([StreamChunk(seq=0, data=FRAMES[0]), ReplyEnd(chunks=1, error=error)])
    assert (
        out
        == FRAMES[0]
        + b'data: {"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}\n\n'
        + DONE
    )


async def test_error_reply_mid_stream() -> None:
    error = error_response(ErrorKind.TIMEOUT, "late")
    out = await _collect([ReplyError(status=504, error=error)])
    assert _last_error(out)["type"] == "TimeoutError" and out.endswith(DONE)


async def test_deadline_mid_stream() -> None:
    out = await _collect([StreamChunk(seq=0, data=FRAMES[0])])
    assert _last_error(out)["code"] == 504 and out.endswith(DONE)


async def test_unexpected_message_mid_stream() -> None:
    out = await _collect([ReplyResponse(status=200, body=b"{}")])  # type: ignore[arg-type]
    assert _last_error(out)["code"] == 502


async def test_an_unforeseen_failure_still_ends_the_stream() -> None:
    async def broken(timeout_s: float) -> object:
        raise RuntimeError("boom")

    out = b"".join([c async for c in relay(broken, deadline=1e18)])
    assert _last_error(out)["code"] == 500 and out.endswith(DONE)
