"""`schemas.wire.encode_reply` / `decode_reply`: a stream chunk as a header line and its raw bytes,
every other reply as JSON."""

from __future__ import annotations

import msgspec
import pytest

from schemas import wire
from schemas.errors import ErrorKind, error_response
from schemas.wire import StreamChunk, decode_reply, encode_reply, encoder

ROUTE = wire.Route(model="medical-lora", base_model="llama2-7b", category="medical")
FRAME = 'data: {"choices":[{"delta":{"content":"Grüße ☃\\n"}}]}\n\ndata: [DONE]\n\n'.encode()


@pytest.mark.parametrize(
    "message",
    [
        wire.ReplyHead(route=ROUTE),
        StreamChunk(seq=0, data=FRAME),
        StreamChunk(seq=41, data=b""),
        StreamChunk(seq=2, data=b"\n\n{\n"),
        wire.ReplyEnd(chunks=42, error=error_response(ErrorKind.BAD_GATEWAY, "cut\nshort")),
        wire.ReplyResponse(status=200, body=msgspec.Raw(b'{"id":"x"}'), route=ROUTE),
        wire.ReplyError(status=503, error=error_response(ErrorKind.UNAVAILABLE, "none")),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(message: wire.ReplyMessage) -> None:
    got = decode_reply(encode_reply(message))
    assert type(got) is type(message)
    assert encoder.encode(got) == encoder.encode(message)


def test_a_chunk_is_a_header_line_then_its_bytes() -> None:
    assert (
        encode_reply(StreamChunk(seq=7, data=FRAME)) == b'{"type":"chunk","v":1,"seq":7}\n' + FRAME
    )


def test_other_replies_are_their_json() -> None:
    message = wire.ReplyEnd(chunks=3)
    assert encode_reply(message) == encoder.encode(message)


def test_the_json_chunk_of_the_previous_version_is_still_read() -> None:
    old = encoder.encode(StreamChunk(seq=3, data=FRAME))
    assert b'"data":"' in old and b"\n" not in old  # base64 inside JSON
    assert decode_reply(old) == StreamChunk(seq=3, data=FRAME)


def test_a_newer_chunk_header_is_read_by_this_version() -> None:
    newer = b'{"type":"chunk","v":2,"seq":5,"flags":["compressed-someday"]}\n' + FRAME
    assert decode_reply(newer) == StreamChunk(v=2, seq=5, data=FRAME)


@pytest.mark.parametrize(
    "payload",
    [b'{"type":"chunk","v":1}\nx', b'{"type":"chunk","seq":"7"}\nx', b'{"type":"chunk",\nx', b"x"],
)
def test_a_bad_payload_is_an_error(payload: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_reply(payload)
