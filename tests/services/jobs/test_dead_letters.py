"""`services.jobs.dead_letters`: what can still be read from a line that will not run."""

from __future__ import annotations

from services.jobs.dead_letters import LineIds, failed_result, read_ids
from services.jobs.store import line_request_id


def test_ids_are_read_as_far_as_they_go() -> None:
    assert read_ids(b'{"job_id":"b","custom_id":"x","expires_at":"soon"}') == LineIds("b", "x")
    assert read_ids(b'{"job_id":"b","custom_id":3}') == LineIds()
    assert read_ids(b"\x00garbage") == LineIds()


def test_a_failed_result_needs_both_ids() -> None:
    result = failed_result(LineIds("b", "x"), "invalid_request", "unreadable")
    assert result is not None and result.job_id == "b"
    assert result.line.id == line_request_id("b", "x") and not result.line.ok
    assert result.line.error is not None and result.line.error.code == "invalid_request"
    assert failed_result(LineIds("b", None), "failed", "x") is None
    assert failed_result(LineIds(), "failed", "x") is None
