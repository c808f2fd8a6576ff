"""`services.jobs.run_line`: the checks before a line runs, the call, and what a reply means."""

from __future__ import annotations

import time
from collections.abc import Mapping

import msgspec
import pytest

from schemas.config import Limits
from schemas.errors import ErrorKind, error_response
from schemas.jobs import BatchLineError, JobLine
from schemas.wire import ReplyError, ReplyHead, ReplyResponse, Route, RouteChat, encoder
from services.common.subjects import HEADER_DEADLINE, HEADER_REQUEST_ID
from services.jobs.run_line import Done, LineUnreachable, Retry, outcome, precheck, run
from services.jobs.store import line_request_id

_BODY = b'{"model":"MoM","messages":[{"role":"user","content":"hi"}]}'


def _line(body: bytes = _BODY, **changes: object) -> JobLine:
    line = JobLine(job_id="batch_1", custom_id="a", body=msgspec.Raw(body))
    return msgspec.structs.replace(line, **changes)


def test_a_good_line_runs() -> None:
    assert (
        precheck(_line(expires_at=int(time.time()) + 60), "in_progress", int(time.time())) is None
    )
    assert precheck(_line(), None, 0) is None  # a raw job: no batch


@pytest.mark.parametrize(
    ("line", "status", "code"),
    [
        (_line(error=BatchLineError(code="invalid_request", message="x")), None, "invalid_request"),
        (_line(), "cancelling", "batch_cancelled"),
        (_line(), "cancelled", "batch_cancelled"),
        (_line(), "expired", "batch_expired"),
        (_line(expires_at=100), "in_progress", "batch_expired"),
        (_line(b'{"messages":[],"stream":true}'), None, "invalid_request"),
        (_line(b'{"messages":"no"}'), None, "invalid_request"),
        (_line(url="/v1/completions"), None, "invalid_request"),
    ],
)
def test_lines_that_must_not_run_fail_at_once(line: JobLine, status: str, code: str) -> None:
    failed = precheck(line, status, 200)  # type: ignore[arg-type]
    assert failed is not None and failed.error is not None and failed.error.code == code
    assert failed.custom_id == "a" and failed.id == line_request_id("batch_1", "a")
    assert not failed.ok


def test_an_answer_is_final_with_its_route() -> None:
    route = Route(model="medical-lora", base_model="llama2-7b")
    reply = ReplyResponse(status=200, body=msgspec.Raw(b'{"model":"medical-lora"}'), route=route)
    done = outcome(_line(), encoder.encode(reply))
    assert isinstance(done, Done) and done.line.ok and done.route == route
    assert done.line.response is not None
    assert done.line.response.request_id == done.line.id
    assert bytes(done.line.response.body) == b'{"model":"medical-lora"}'


def test_a_client_error_is_final_and_goes_to_the_error_file() -> None:
    error = ReplyError(status=404, error=error_response(ErrorKind.NOT_FOUND, "no such model"))
    done = outcome(_line(), encoder.encode(error))
    assert isinstance(done, Done) and not done.line.ok
    assert done.line.response is not None and done.line.response.status_code == 404
    assert b"no such model" in bytes(done.line.response.body)


@pytest.mark.parametrize("status", [429, 500, 503, 504])
def test_overload_and_server_errors_are_transient(status: int) -> None:
    kind = ErrorKind.OVERLOADED if status == 429 else ErrorKind.UNAVAILABLE
    error = ReplyError(status=status, error=error_response(kind, "busy"))
    retry = outcome(_line(), encoder.encode(error))
    assert isinstance(retry, Retry) and str(status) in retry.reason
    answered = ReplyResponse(status=status, body=msgspec.Raw(b"{}"))
    assert isinstance(outcome(_line(), encoder.encode(answered)), Retry)


def test_an_unexpected_or_unreadable_reply_is_a_bad_gateway() -> None:
    for payload in (encoder.encode(ReplyHead()), b"garbage"):
        done = outcome(_line(), payload)
        assert isinstance(done, Done) and done.line.error is not None
        assert done.line.error.code == "bad_gateway"


async def test_run_sends_the_body_with_the_line_id_and_deadline() -> None:
    sent: list[tuple[bytes, Mapping[str, str], float]] = []

    async def request(payload: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
        sent.append((payload, headers, timeout_s))
        return encoder.encode(ReplyResponse(status=200, body=msgspec.Raw(b"{}")))

    line = _line(expires_at=int(time.time()) + 5)
    done = await run(line, request, timeout_s=60.0)
    assert isinstance(done, Done) and done.line.ok
    payload, headers, timeout_s = sent[0]
    assert msgspec.json.decode(payload, type=RouteChat).body == msgspec.Raw(_BODY)
    assert headers[HEADER_REQUEST_ID] == line_request_id("batch_1", "a")
    assert timeout_s <= 5.0  # the window ends before the line's own timeout
    assert int(headers[HEADER_DEADLINE]) <= (line.expires_at or 0) * 1000 + 1


async def test_no_answer_is_transient_until_the_window_ends() -> None:
    async def request(payload: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
        raise LineUnreachable("no classifier listens")

    retry = await run(_line(), request, timeout_s=1.0)
    assert isinstance(retry, Retry) and retry.line.error is not None
    assert retry.line.error.code == "unavailable"
    expired = await run(_line(expires_at=int(time.time())), request, timeout_s=1.0)
    assert isinstance(expired, Done) and expired.line.error is not None
    assert expired.line.error.code == "batch_expired"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"messages":[{"role":"user","content":"x"}],"n":17}', "n must be at most 16, got 17."),
        (
            b'{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":"99999"}',
            "max_completion_tokens must be at most 32768, got 99999.",
        ),
        (
            b'{"messages":[{"role":"user","content":"x"}],"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
            "The JSON body nests arrays and objects deeper than 64 levels.",
        ),
    ],
)
def test_a_line_beyond_the_caps_fails_like_at_the_ingress(body: bytes, message: str) -> None:
    failed = precheck(_line(body), None, 0)
    assert failed is not None and failed.error is not None
    assert failed.error.code == "invalid_request" and failed.error.message.startswith(message)


def test_the_line_caps_come_from_the_config() -> None:
    body = b'{"messages":[{"role":"user","content":"x"}],"n":17}'
    assert precheck(_line(body), None, 0, Limits(max_n=17)) is None


def test_a_line_whose_answer_is_too_large_for_one_result_fails_clearly() -> None:
    head = ReplyHead(status=200, whole=True)
    done = outcome(_line(), encoder.encode(head))
    assert isinstance(done, Done) and done.line.error is not None
    assert done.line.error.code == "response_too_large"
