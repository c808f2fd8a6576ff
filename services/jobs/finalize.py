"""Ending a batch: decide its final state, write its output and error files, store the state.

A batch is final once every line has a result (`completed`), when it was cancelled
(`cancelled`), or when its completion window passed with lines unrun (`expired`). For the last
two, the lines still waiting are purged from the lines stream and each line without a result gets
a failed one (`batch_cancelled`, `batch_expired`), published with the line's own `Nats-Msg-Id`:
a worker that finishes the same line at the same moment stores at most one of the two, so the
files and the counts always agree. Finalizing again (a worker died half-way) repeats the same
steps with the same file ids.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from schemas.config import Jobs
from schemas.jobs import (
    Batch,
    BatchLineError,
    BatchOutputLine,
    BatchStatus,
    FinalizeBatch,
    JobResult,
    RequestCounts,
    read_input,
    result_decoder,
)
from services.common.jetstream import bucket_keys, result_counts
from services.common.subjects import Subjects
from services.jobs.start import line_keys
from services.jobs.store import (
    FINAL,
    BatchStore,
    derived_id,
    line_request_id,
    now_s,
    read_file,
    write_file,
)

__all__ = [
    "due",
    "final",
    "finalize_batch",
    "finalizing",
    "missing_results",
    "read_results",
    "render",
    "request_finalize",
    "request_if_ready",
    "store_result",
    "sweep",
    "target",
]

_encoder = msgspec.json.Encoder()
_OPEN: frozenset[BatchStatus] = frozenset({"in_progress", "cancelling", "finalizing"})


def target(batch: Batch, done: int, now: int) -> BatchStatus | None:
    """The final state `batch` takes now that `done` of its lines have results, or None while
    it must wait (still validating, lines left and time left)."""
    if batch.status in FINAL or batch.status == "validating" or batch.in_progress_at is None:
        return None
    if batch.cancelling_at is not None:
        return "cancelled"
    expires = batch.expires_at
    if batch.status == "finalizing":
        started = batch.finalizing_at or now
        return "expired" if expires is not None and started >= expires else "completed"
    if done >= batch.request_counts.total:
        return "completed"
    if expires is not None and now >= expires:
        return "expired"
    return None


def due(batch: Batch, now: int) -> bool:
    """True for a running batch whose completion window has passed (the sweep finalizes it)."""
    return batch.status in _OPEN and batch.expires_at is not None and now >= batch.expires_at


def finalizing(batch: Batch, now: int) -> Batch | None:
    """`batch` moved to `finalizing` (None when final already or finalizing)."""
    if batch.status in FINAL or batch.status == "finalizing":
        return None
    return msgspec.structs.replace(batch, status="finalizing", finalizing_at=now)


def final(
    batch: Batch,
    status: BatchStatus,
    counts: RequestCounts,
    output_file_id: str | None,
    error_file_id: str | None,
    now: int,
) -> Batch | None:
    """`batch` in its final `status` with its files and counts (None when already final)."""
    if batch.status in FINAL:
        return None
    stamps = {
        "completed": "completed_at",
        "expired": "expired_at",
        "cancelled": "cancelled_at",
        "failed": "failed_at",
    }
    changed = msgspec.structs.replace(
        batch,
        status=status,
        request_counts=counts,
        output_file_id=output_file_id,
        error_file_id=error_file_id,
    )
    return msgspec.structs.replace(changed, **{stamps[status]: now})


def render(results: list[JobResult], keys: list[str]) -> tuple[bytes, bytes]:
    """The output and error files: one `BatchOutputLine` JSON per line, ordered as the input
    file's lines (`keys`: their custom ids); answers with status 200 go to the output."""
    order = {key: index for index, key in enumerate(keys)}
    ranked = sorted(results, key=lambda r: order.get(r.line.custom_id or "", len(keys)))
    output = b"".join(_encoder.encode(r.line) + b"\n" for r in ranked if r.line.ok)
    errors = b"".join(_encoder.encode(r.line) + b"\n" for r in ranked if not r.line.ok)
    return output, errors


def missing_results(
    batch_id: str, keys: list[str], have: set[str], status: BatchStatus, now: int
) -> list[JobResult]:
    """Failed results for the lines of `keys` without one, when the batch ends `status`."""
    code = "batch_cancelled" if status == "cancelled" else "batch_expired"
    message = (
        "the batch was cancelled before this line ran"
        if status == "cancelled"
        else "the batch's completion window ended before this line ran"
    )
    return [
        JobResult(
            job_id=batch_id,
            line=BatchOutputLine(
                id=line_request_id(batch_id, key),
                custom_id=key,
                error=BatchLineError(code=code, message=message),
            ),
            finished_at=now,
        )
        for key in keys
        if key not in have
    ]


async def store_result(js: JetStreamContext, subjects: Subjects, result: JobResult) -> bool:
    """Publish `result` to the results stream; False when it was there already (the stream
    dropped it as a duplicate of the line's earlier result)."""
    custom_id = result.line.custom_id or result.line.id
    ack = await js.publish(
        subjects.job_results(result.job_id, result.line.ok),
        _encoder.encode(result),
        headers={"Nats-Msg-Id": f"{result.job_id}:{custom_id}"},
    )
    return not ack.duplicate


async def read_results(
    js: JetStreamContext, subjects: Subjects, job_id: str, timeout_s: float = 10.0
) -> list[JobResult]:
    """Every stored result of `job_id` (an ordered consumer over the results stream)."""
    counts = await result_counts(js, subjects, job_id)
    expected = counts.completed + counts.failed
    if expected == 0:
        return []
    sub = await js.subscribe(
        subjects.job_results(job_id), stream=subjects.results_stream, ordered_consumer=True
    )
    results: dict[str, JobResult] = {}
    try:
        while len(results) < expected:
            msg = await sub.next_msg(timeout=timeout_s)
            result = result_decoder.decode(msg.data)
            results[result.line.custom_id or result.line.id] = result
    finally:
        await sub.unsubscribe()
    return list(results.values())


async def _input_keys(files: ObjectStore, batch: Batch, jobs: Jobs) -> list[str]:
    data = await read_file(files, batch.input_file_id)
    if data is None:
        return []
    read = read_input(data, max_line_bytes=jobs.max_line_bytes, max_lines=jobs.max_lines)
    return line_keys(read.lines)


async def finalize_batch(
    js: JetStreamContext,
    subjects: Subjects,
    batches: BatchStore,
    files: ObjectStore,
    jobs: Jobs,
    batch_id: str,
) -> Batch | None:
    """Finalize `batch_id` if it is ready (see `target`); return the batch as stored.

    Idempotent: a final batch is returned as it is, a batch not ready is left alone. Raises
    nats-py's errors (the caller redelivers the request to finalize)."""
    found = await batches.read(batch_id)
    if found is None or found[0].status in FINAL:
        return None if found is None else found[0]
    counts = await result_counts(js, subjects, batch_id)
    goal = target(found[0], counts.completed + counts.failed, now_s())
    if goal is None:
        return found[0]
    batch = await batches.update(batch_id, lambda b: finalizing(b, now_s()))
    if batch is None or batch.status in FINAL:
        return batch
    keys = await _input_keys(files, batch, jobs)
    if goal != "completed":
        await js.purge_stream(subjects.lines_stream, subject=subjects.job_lines(batch_id))
        have = {r.line.custom_id or "" for r in await read_results(js, subjects, batch_id)}
        missing = missing_results(batch_id, keys, have, goal, now_s())
        await asyncio.gather(*(store_result(js, subjects, result) for result in missing))
    results = await read_results(js, subjects, batch_id)
    output, errors = render(results, keys)
    output_id = derived_id(batch_id, "output") if output else None
    error_id = derived_id(batch_id, "error") if errors else None
    if output_id is not None:
        await write_file(files, output_id, f"{batch_id}_output.jsonl", "batch_output", output)
    if error_id is not None:
        await write_file(files, error_id, f"{batch_id}_error.jsonl", "batch_output", errors)
    ok = sum(1 for r in results if r.line.ok)
    total = max(batch.request_counts.total, len(results))
    final_counts = RequestCounts(total=total, completed=ok, failed=len(results) - ok)
    return await batches.update(
        batch_id, lambda b: final(b, goal, final_counts, output_id, error_id, now_s())
    )


async def request_finalize(js: JetStreamContext, subjects: Subjects, batch_id: str) -> None:
    """Publish `FinalizeBatch` for `batch_id` (`Nats-Msg-Id` = `finalize:<batch id>`, so the
    requests of several workers and sweeps make one)."""
    await js.publish(
        subjects.jobs_control,
        _encoder.encode(FinalizeBatch(batch_id=batch_id)),
        headers={"Nats-Msg-Id": f"finalize:{batch_id}"},
    )


async def request_if_ready(
    js: JetStreamContext, subjects: Subjects, batches: BatchStore, batch_id: str
) -> None:
    """Request the finalization of `batch_id` when it is ready (see `target`); a raw job (no
    batch in KV) is never finalized."""
    found = await batches.read(batch_id)
    if found is None:
        return
    counts = await result_counts(js, subjects, batch_id)
    if target(found[0], counts.completed + counts.failed, now_s()) is not None:
        await request_finalize(js, subjects, batch_id)


async def sweep(
    js: JetStreamContext, subjects: Subjects, batches: BatchStore, finished: set[str]
) -> None:
    """Request the finalization of every running batch that is ready: its completion window
    has passed (even when no line is left to notice it), or every line has a result (when the
    check after its last line failed, e.g. NATS was away).

    `finished` holds the ids of batches seen in a final state, which they never leave; the
    caller keeps it from one sweep to the next, so a sweep reads only the unfinished batches,
    not every batch kept for `jobs.retention_s`. Ids no longer in the bucket are dropped."""
    now = now_s()
    ids = await bucket_keys(js, subjects.batches_bucket)
    finished.intersection_update(ids)
    for batch_id in ids:
        if batch_id in finished:
            continue
        found = await batches.read(batch_id)
        if found is None:
            continue
        batch = found[0]
        if batch.status in FINAL:
            finished.add(batch_id)
        elif due(batch, now):
            await request_finalize(js, subjects, batch_id)
        elif batch.status in ("in_progress", "cancelling"):
            await request_if_ready(js, subjects, batches, batch_id)
