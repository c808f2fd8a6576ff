"""`schemas.jobs`: the input file format, completion windows and the OpenAI objects' shapes."""

from __future__ import annotations

import json

import msgspec
import pytest

from schemas.jobs import (
    Batch,
    BatchOutputLine,
    BatchResponse,
    JobLine,
    JobResult,
    line_decoder,
    read_input,
    result_decoder,
    window_seconds,
)

CHAT = {"model": "MoM", "messages": [{"role": "user", "content": "hi"}]}


def _line(custom_id: object, **changes: object) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    return json.dumps({**line, **changes}).encode()


def test_good_lines_keep_their_body_bytes() -> None:
    parsed = read_input(_line("a") + b"\n\n" + _line("b"), max_line_bytes=10_000, max_lines=100)
    assert not parsed.errors
    assert [(line.number, line.custom_id) for line in parsed.lines] == [(1, "a"), (3, "b")]
    assert all(line.error is None for line in parsed.lines)
    assert json.loads(bytes(parsed.lines[0].body or b"")) == CHAT


@pytest.mark.parametrize(
    ("line", "custom_id", "reason"),
    [
        (b"[1, 2]", None, "not a JSON object"),
        (b"{not json", None, "not a JSON object"),
        (_line("m", method="GET"), "m", "method must be POST"),
        (_line("b", body="text"), "b", "body must be a JSON object"),
        (json.dumps({"custom_id": "x", "url": "/v1/chat/completions"}).encode(), "x", "method"),
        (_line("long", body={**CHAT, "pad": "x" * 500}), "long", "more than 400"),
        (b'{"body":' + b"[" * 5000 + b"]" * 5000 + b"}", None, "nests JSON too deeply"),
    ],
)
def test_a_bad_line_is_an_error_line_and_the_rest_runs(
    line: bytes, custom_id: str | None, reason: str
) -> None:
    parsed = read_input(_line("ok") + b"\n" + line, max_line_bytes=400, max_lines=100)
    assert not parsed.errors
    good, bad = parsed.lines
    assert good.error is None and good.custom_id == "ok"
    assert bad.custom_id == custom_id and bad.body is None
    assert bad.error is not None and reason in bad.error.message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"\xff\xfe", "invalid_file"),
        (b"one\ntwo\n", "invalid_file"),
        (_line("a") + b"\n" + _line("b", url="/v1/embeddings"), "mixed_endpoints"),
        (_line("a", url="/v1/embeddings"), "invalid_endpoint"),
        (_line("a") + b"\n" + _line("a"), "duplicate_custom_id"),
        (b"\n".join(_line(str(i)) for i in range(4)), "too_many_lines"),
    ],
)
def test_a_bad_file_is_refused_whole(data: bytes, code: str) -> None:
    parsed = read_input(data, max_line_bytes=10_000, max_lines=3)
    assert [error.code for error in parsed.errors] == [code]


def test_windows() -> None:
    assert window_seconds("24h") == 86_400
    assert window_seconds("90m") == 5_400
    assert window_seconds("3s") == 3
    for bad in ("24", "1d", "0h", "h"):
        with pytest.raises(ValueError):
            window_seconds(bad)


def test_messages_round_trip_and_output_lines_have_openais_shape() -> None:
    line = JobLine(job_id="batch_1", custom_id="c", body=msgspec.Raw(b'{"model":"MoM"}'))
    assert line_decoder.decode(msgspec.json.encode(line)) == line
    output = BatchOutputLine(
        id="batch_req_1",
        custom_id="c",
        response=BatchResponse(status_code=200, request_id="r", body=msgspec.Raw(b'{"id":"x"}')),
    )
    result = JobResult(job_id="batch_1", line=output)
    assert result_decoder.decode(msgspec.json.encode(result)).line.ok
    assert json.loads(msgspec.json.encode(output)) == {
        "id": "batch_req_1",
        "custom_id": "c",
        "response": {"status_code": 200, "request_id": "r", "body": {"id": "x"}},
        "error": None,
    }
    batch = json.loads(
        msgspec.json.encode(
            Batch(id="batch_1", input_file_id="f", completion_window="24h", created_at=1)
        )
    )
    assert batch["object"] == "batch" and batch["status"] == "validating"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
