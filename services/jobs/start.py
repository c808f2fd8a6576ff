"""Starting a batch: read its input file again, publish one `JobLine` per line, mark it running.

The ingress validated the file when it created the batch; the worker reads it again because
the file may have been deleted since, and because the lines are published from here. Each line
is published with `Nats-Msg-Id` = `<batch id>:<custom_id>`, so a `StartBatch` delivered twice
(a worker died half-way) publishes nothing twice. A malformed line is published too, carrying
its error, so it is counted and reaches the error file like any other.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from schemas.config import Jobs
from schemas.jobs import (
    BATCH_ENDPOINT,
    Batch,
    BatchError,
    BatchErrors,
    InputLine,
    JobLine,
    read_input,
)
from services.common.subjects import Subjects
from services.jobs.store import BatchStore, now_s, read_file

__all__ = ["failed", "line_keys", "lines_of", "start_batch", "started"]

#: Lines published at once; each waits for its JetStream ack.
_PUBLISH_CHUNK = 256


def line_keys(lines: list[InputLine]) -> list[str]:
    """Each line's `custom_id`, or `line-<number>` for a line without one (made unique)."""
    taken = {line.custom_id for line in lines if line.custom_id is not None}
    keys = []
    for line in lines:
        key = line.custom_id
        if key is None:
            key = f"line-{line.number}"
            while key in taken:
                key += "_"
            taken.add(key)
        keys.append(key)
    return keys


def lines_of(batch: Batch, data: bytes, jobs: Jobs) -> list[JobLine] | list[BatchError]:
    """The job lines of `batch`'s input file `data`, or why the whole file is refused."""
    read = read_input(data, max_line_bytes=jobs.max_line_bytes, max_lines=jobs.max_lines)
    if read.errors:
        return read.errors
    return [
        JobLine(
            job_id=batch.id,
            custom_id=key,
            body=line.body if line.body is not None else msgspec.Raw(b"null"),
            url=line.url or BATCH_ENDPOINT,
            expires_at=batch.expires_at,
            error=line.error,
        )
        for line, key in zip(read.lines, line_keys(read.lines), strict=True)
    ]


def started(batch: Batch, total: int, now: int) -> Batch | None:
    """`batch` running with `total` lines (a cancelling batch keeps its state); None when it
    has moved on already."""
    if batch.status not in ("validating", "cancelling"):
        return None
    counts = msgspec.structs.replace(batch.request_counts, total=total)
    status = "in_progress" if batch.status == "validating" else batch.status
    return msgspec.structs.replace(batch, status=status, in_progress_at=now, request_counts=counts)


def failed(batch: Batch, errors: list[BatchError], now: int) -> Batch | None:
    """`batch` failed validation with `errors`; None unless it was still validating."""
    if batch.status != "validating":
        return None
    return msgspec.structs.replace(
        batch, status="failed", failed_at=now, errors=BatchErrors(data=errors)
    )


async def _publish(js: JetStreamContext, subjects: Subjects, lines: list[JobLine]) -> None:
    encoder = msgspec.json.Encoder()
    for first in range(0, len(lines), _PUBLISH_CHUNK):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.job_lines(line.job_id),
                    encoder.encode(line),
                    headers={"Nats-Msg-Id": f"{line.job_id}:{line.custom_id}"},
                )
                for line in lines[first : first + _PUBLISH_CHUNK]
            )
        )


async def start_batch(
    js: JetStreamContext,
    subjects: Subjects,
    batches: BatchStore,
    files: ObjectStore,
    jobs: Jobs,
    batch_id: str,
) -> Batch | None:
    """Publish the lines of a validating batch and mark it `in_progress` (or `failed` when its
    file is gone or refused). A batch past validating is left alone; a cancelling one that
    never started ends `cancelled` at once. Returns the batch as stored (None: unknown).
    Raises nats-py's errors when JetStream does not take a line (the caller retries)."""
    found = await batches.read(batch_id)
    if found is None:
        return None
    batch, _ = found
    if batch.status == "cancelling" and batch.in_progress_at is None:
        return await batches.update(batch_id, _cancelled_unstarted)
    if batch.status != "validating":
        return batch
    data = await read_file(files, batch.input_file_id)
    if data is None:
        missing = BatchError(
            code="file_not_found", message=f"input file {batch.input_file_id} no longer exists"
        )
        return await batches.update(batch_id, lambda b: failed(b, [missing], now_s()))
    lines = lines_of(batch, data, jobs)
    if lines and isinstance(lines[0], BatchError):
        refused = [error for error in lines if isinstance(error, BatchError)]
        return await batches.update(batch_id, lambda b: failed(b, refused, now_s()))
    job_lines = [line for line in lines if isinstance(line, JobLine)]
    await _publish(js, subjects, job_lines)
    return await batches.update(batch_id, lambda b: started(b, len(job_lines), now_s()))


def _cancelled_unstarted(batch: Batch) -> Batch | None:
    if batch.status != "cancelling":
        return None
    return msgspec.structs.replace(batch, status="cancelled", cancelled_at=now_s())
