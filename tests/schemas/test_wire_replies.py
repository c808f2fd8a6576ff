"""`schemas.wire.encode_reply` / `decode_reply`: stream chunks as raw payloads, the rest as JSON."""

from __future__ import annotations

import msgspec
import pytest

from schemas.errors import ErrorKind, error_response
from schemas.wire import (
    CHUNK_HEADER,
    ChunkHeader,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyMessage,
    ReplyResponse,
    Route,
    StreamChunk,
    decode_reply,
    encode_reply,
    encoder,
)

ROUTE = Route(model="medical-lora", base_model="llama2-7b", category="medical")
FRAME = 'data: {"choices":[{"delta":{"content":"Grüße ☃"}}]}\n\n'.encode()


@pytest.mark.parametrize(
    "message",
    [
        ReplyHead(route=ROUTE),
        StreamChunk(seq=0, data=FRAME),
        StreamChunk(seq=41, data=b""),
        ReplyEnd(chunks=42, error=error_response(ErrorKind.BAD_GATEWAY, "cut")),
        ReplyResponse(status=200, body=msgspec.Raw(b'{"id":"x"}'), route=ROUTE),
        ReplyError(status=503, error=error_response(ErrorKind.UNAVAILABLE, "none")),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(message: ReplyMessage) -> None:
    payload, headers = encode_reply(message)
    got = decode_reply(headers, payload)
    assert type(got) is type(message)
    assert encoder.encode(got) == encoder.encode(message)


def test_a_chunk_is_its_bytes_with_a_header() -> None:
    payload, headers = encode_reply(StreamChunk(seq=7, data=FRAME))
    assert payload == FRAME
    assert headers == {CHUNK_HEADER: '{"v":1,"seq":7}'}


def test_other_replies_carry_no_headers() -> None:
    assert encode_reply(ReplyHead(route=ROUTE))[1] is None


def test_the_json_chunk_of_the_previous_version_is_still_read() -> None:
    old = encoder.encode(StreamChunk(seq=3, data=FRAME))
    assert b'"data":"' in old  # base64 inside JSON
    assert decode_reply(None, old) == StreamChunk(seq=3, data=FRAME)
    assert decode_reply({"Other": "x"}, old) == StreamChunk(seq=3, data=FRAME)


def test_a_newer_chunk_header_is_read_by_this_version() -> None:
    header = '{"v":2,"seq":5,"flags":["compressed-someday"]}'
    assert decode_reply({CHUNK_HEADER: header}, FRAME) == StreamChunk(v=2, seq=5, data=FRAME)
    assert ChunkHeader(seq=1).v == 1


@pytest.mark.parametrize("header", ["", "7", '{"v":1}', '{"seq":"7"}'])
def test_a_bad_chunk_header_is_an_error(header: str) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_reply({CHUNK_HEADER: header}, FRAME)
