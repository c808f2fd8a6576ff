"""`services.jobs.finalize`: when a batch is final, in which state, and its files; the sweep
against a real nats-server."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from nats.aio.client import Client

from schemas.config import Jobs
from schemas.jobs import (
    Batch,
    BatchLineError,
    BatchOutputLine,
    BatchResponse,
    FinalizeBatch,
    JobResult,
    RequestCounts,
)
from services.common.jetstream import ensure_job_resources
from services.common.subjects import Subjects
from services.jobs.finalize import (
    due,
    final,
    finalizing,
    missing_results,
    render,
    sweep,
    target,
)
from services.jobs.store import BatchStore, derived_id, line_request_id, now_s


def _batch(status: str = "in_progress", total: int = 3, **changes: object) -> Batch:
    batch = Batch(
        id="batch_1",
        input_file_id="file-1",
        completion_window="24h",
        created_at=1,
        in_progress_at=2,
        expires_at=100,
        status=status,  # type: ignore[arg-type]
        request_counts=RequestCounts(total=total),
    )
    return msgspec.structs.replace(batch, **changes)


@pytest.mark.parametrize(
    ("batch", "done", "now", "expected"),
    [
        (_batch(), 2, 50, None),
        (_batch(), 3, 50, "completed"),
        (_batch(), 2, 100, "expired"),
        (_batch("cancelling", cancelling_at=40), 0, 50, "cancelled"),
        (_batch("validating", in_progress_at=None), 0, 500, None),
        (_batch("cancelling", in_progress_at=None, cancelling_at=3), 0, 50, None),
        (_batch("completed"), 3, 50, None),
        (_batch("finalizing", finalizing_at=60), 3, 120, "completed"),
        (_batch("finalizing", finalizing_at=100), 3, 120, "expired"),
    ],
)
def test_target(batch: Batch, done: int, now: int, expected: str | None) -> None:
    assert target(batch, done, now) == expected


def test_due_only_for_running_batches_past_their_window() -> None:
    assert due(_batch(), 100) and not due(_batch(), 99)
    assert not due(_batch("completed"), 500) and not due(_batch("validating"), 500)


def test_finalizing_then_final() -> None:
    moving = finalizing(_batch(), 10)
    assert moving is not None and moving.status == "finalizing" and moving.finalizing_at == 10
    assert finalizing(moving, 11) is None
    counts = RequestCounts(total=3, completed=2, failed=1)
    done = final(moving, "completed", counts, "file-o", None, 12)
    assert done is not None and done.status == "completed" and done.completed_at == 12
    assert done.output_file_id == "file-o" and done.request_counts == counts
    assert final(done, "expired", counts, None, None, 13) is None


def _result(custom_id: str, ok: bool) -> JobResult:
    line = BatchOutputLine(
        id=line_request_id("batch_1", custom_id),
        custom_id=custom_id,
        response=BatchResponse(status_code=200, request_id="r", body=msgspec.Raw(b"{}"))
        if ok
        else None,
        error=None if ok else BatchLineError(code="invalid_request", message="x"),
    )
    return JobResult(job_id="batch_1", line=line)


def test_render_orders_lines_as_the_input_and_splits_them() -> None:
    results = [_result("c", True), _result("a", False), _result("b", True)]
    output, errors = render(results, ["a", "b", "c"])
    assert [msgspec.json.decode(x)["custom_id"] for x in output.splitlines()] == ["b", "c"]
    line = msgspec.json.decode(errors.splitlines()[0])
    assert line["custom_id"] == "a" and line["response"] is None
    assert line["error"] == {"code": "invalid_request", "message": "x"}


def test_missing_results_fail_the_lines_without_one() -> None:
    missing = missing_results("batch_1", ["a", "b", "c"], {"b"}, "cancelled", 5)
    assert [r.line.custom_id for r in missing] == ["a", "c"]
    assert all(r.line.error is not None and r.line.error.code == "batch_cancelled" for r in missing)
    expired = missing_results("batch_1", ["a"], set(), "expired", 5)
    assert expired[0].line.error is not None and expired[0].line.error.code == "batch_expired"


def test_ids_derive_from_the_batch() -> None:
    assert derived_id("batch_1", "output") == derived_id("batch_1", "output")
    assert derived_id("batch_1", "output") != derived_id("batch_1", "error")
    assert derived_id("batch_1", "output").startswith("file-")
    assert len(derived_id("batch_1", "output")) == len("file-") + 32
    assert line_request_id("batch_1", "a").startswith("batch_req_")
    assert len(line_request_id("batch_1", "a")) == len("batch_req_") + 32


@pytest.mark.integration
async def test_sweep_finalizes_due_batches_and_reads_finished_ones_once(client: Client) -> None:
    js = client.jetstream()
    subjects = Subjects(f"t{uuid.uuid4().hex[:8]}")
    resources = await ensure_job_resources(js, subjects, Jobs(retention_s=3600.0))
    now = now_s()
    for batch in (
        _batch("completed", id="batch_done"),
        _batch(id="batch_due", expires_at=now - 1),
        _batch(id="batch_running", expires_at=now + 3600),
    ):
        await resources.batches.put(batch.id, msgspec.json.encode(batch))
    store = BatchStore(resources.batches)
    reads: list[str] = []
    read = store.read

    async def counted(batch_id: str) -> tuple[Batch, int] | None:
        reads.append(batch_id)
        return await read(batch_id)

    store.read = counted  # type: ignore[method-assign]
    finished = {"batch_gone"}  # an id no longer in the bucket is dropped
    await sweep(js, subjects, store, finished)
    assert finished == {"batch_done"}
    assert "batch_done" in reads
    # Exactly one finalization request, for the batch whose window has passed.
    assert (await js.stream_info(subjects.control_stream)).state.messages == 1
    request = await js.get_last_msg(subjects.control_stream, subjects.jobs_control)
    assert msgspec.json.decode(request.data or b"", type=FinalizeBatch).batch_id == "batch_due"

    reads.clear()
    await sweep(js, subjects, store, finished)
    assert "batch_done" not in reads and "batch_running" in reads
    # The request is deduplicated (`finalize:<batch id>`): still one.
    assert (await js.stream_info(subjects.control_stream)).state.messages == 1
