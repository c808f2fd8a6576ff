"""The error envelope, the kind -> status table and the lenient reader."""

from __future__ import annotations

import msgspec
import pytest

from schemas.errors import (
    STATUS,
    ErrorInfo,
    ErrorKind,
    LegacyErrorResponse,
    error_response,
    parse_error_body,
)


def test_every_kind_has_a_status() -> None:
    assert set(STATUS) == set(ErrorKind)


def test_envelope_bytes_match_vllm() -> None:
    body = error_response(ErrorKind.NOT_FOUND, "The model `x` does not exist.", param="model")
    assert msgspec.json.encode(body) == (
        b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError",'
        b'"param":"model","code":404}}'
    )
    assert msgspec.json.encode(LegacyErrorResponse.from_current(body)) == (
        b'{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError",'
        b'"param":"model","code":404}'
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error":{"message":"m","type":"NotFoundError","param":"model","code":404}}',
            ErrorInfo(message="m", type="NotFoundError", param="model", code=404),
        ),
        (
            b'{"object":"error","message":"m","type":"NotFoundError","param":null,"code":404}',
            ErrorInfo(message="m", type="NotFoundError", param=None, code=404),
        ),
        (b'{"detail":"Not Found"}', ErrorInfo(message="Not Found", type="", code=404)),
        (
            b'{"error":"Unauthorized"}',
            ErrorInfo(message="Unauthorized", type="Unauthorized", code=404),
        ),
        (
            b"<html>bad gateway</html>",
            ErrorInfo(message="<html>bad gateway</html>", type="", code=404),
        ),
        (b"[1]", ErrorInfo(message="[1]", type="", code=404)),
    ],
    ids=["nested", "flat", "fastapi", "unauthorized", "not json", "not an object"],
)
def test_parse_error_body_reads_every_shape(body: bytes, expected: ErrorInfo) -> None:
    assert parse_error_body(body, 404) == expected
