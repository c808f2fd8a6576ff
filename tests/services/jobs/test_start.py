"""`services.jobs.start`: an input file into job lines, and the batch's move to in_progress."""

from __future__ import annotations

import msgspec

from schemas.config import Jobs
from schemas.jobs import Batch, BatchError, JobLine
from services.jobs.start import failed, lines_of, started

_GOOD = (
    b'{"custom_id":"%s","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"messages":[{"role":"user","content":"hi"}]}}'
)


def _batch(status: str = "validating") -> Batch:
    return Batch(
        id="batch_1",
        input_file_id="file-1",
        completion_window="24h",
        created_at=1,
        expires_at=100,
        status=status,  # type: ignore[arg-type]
    )


def test_every_line_becomes_a_job_line_malformed_ones_with_their_error() -> None:
    data = b"\n".join([_GOOD % b"a", b"not json", b'{"method":"POST"}', _GOOD % b"line-2"])
    lines = lines_of(_batch(), data, Jobs())
    assert all(isinstance(line, JobLine) for line in lines)
    keys = [line.custom_id for line in lines if isinstance(line, JobLine)]
    # Lines without a custom_id get their line number, never one a real line uses.
    assert keys == ["a", "line-2_", "line-3", "line-2"]
    first, second = lines[0], lines[1]
    assert isinstance(first, JobLine) and first.error is None and first.expires_at == 100
    assert isinstance(second, JobLine) and second.error is not None


def test_a_refused_file_gives_its_errors() -> None:
    errors = lines_of(_batch(), _GOOD % b"a" + b"\n" + _GOOD % b"a", Jobs())
    assert [e.code for e in errors if isinstance(e, BatchError)] == ["duplicate_custom_id"]
    assert lines_of(_batch(), b"", Jobs())[0].code == "empty_file"  # type: ignore[union-attr]


def test_started_moves_a_validating_batch_and_keeps_a_cancelling_one() -> None:
    running = started(_batch(), 3, 50)
    assert running is not None and running.status == "in_progress"
    assert running.in_progress_at == 50 and running.request_counts.total == 3
    cancelling = started(_batch("cancelling"), 3, 50)
    assert cancelling is not None and cancelling.status == "cancelling"
    assert cancelling.request_counts.total == 3
    assert started(_batch("in_progress"), 3, 50) is None


def test_failed_keeps_the_errors() -> None:
    error = BatchError(code="file_not_found", message="gone")
    batch = failed(_batch(), [error], 7)
    assert batch is not None and batch.status == "failed" and batch.failed_at == 7
    assert batch.errors is not None and batch.errors.data == [error]
    assert failed(msgspec.structs.replace(_batch(), status="in_progress"), [error], 7) is None
