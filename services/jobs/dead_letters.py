"""Lines that will not run: their dead letters, and the failed results stored in their place.

A dead letter keeps the line's payload as it was, the last error and how often the line was
delivered, on `<prefix>.jobs.dead.<job>` (`_` when no job id can be read). It is published with
`Nats-Msg-Id` = the lines stream and the line's sequence, so a line buried twice (a worker died
after publishing it) leaves one letter. Nothing here decides when a line is buried.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from schemas.jobs import BatchLineError, BatchOutputLine, DeadLetter, JobResult
from services.common.subjects import Subjects
from services.jobs.store import line_request_id, now_s

__all__ = ["LineIds", "failed_result", "publish_dead_letter", "read_ids"]

_encoder = msgspec.json.Encoder()


class LineIds(msgspec.Struct):
    """What may still be read from a line whose payload is no `JobLine`."""

    job_id: str | None = None
    custom_id: str | None = None


def read_ids(payload: bytes) -> LineIds:
    """The job id and custom id of a payload, as far as they can be read."""
    try:
        return msgspec.json.decode(payload, type=LineIds)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return LineIds()


def failed_result(ids: LineIds, code: str, message: str) -> JobResult | None:
    """The failed result to store for a buried line; None when its ids cannot be read."""
    if not ids.job_id or not ids.custom_id:
        return None
    line = BatchOutputLine(
        id=line_request_id(ids.job_id, ids.custom_id),
        custom_id=ids.custom_id,
        error=BatchLineError(code=code, message=message),
    )
    return JobResult(job_id=ids.job_id, line=line, finished_at=now_s())


async def publish_dead_letter(
    js: JetStreamContext,
    subjects: Subjects,
    payload: bytes,
    seq: int,
    ids: LineIds,
    error: str,
    deliveries: int,
) -> None:
    """Publish the dead letter of the line at `seq` of the lines stream."""
    dead = DeadLetter(
        job_id=ids.job_id,
        custom_id=ids.custom_id,
        payload=payload,
        error=error,
        deliveries=deliveries,
        stream_seq=seq,
        at=now_s(),
    )
    await js.publish(
        subjects.job_dead(ids.job_id),
        _encoder.encode(dead),
        headers={"Nats-Msg-Id": f"dead:{subjects.lines_stream}:{seq}"},
    )
