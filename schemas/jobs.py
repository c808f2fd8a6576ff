"""Asynchronous jobs: the JetStream messages, the OpenAI Batch API objects, and their files.

A job line is one chat completion request of a batch (or of a raw job published straight to
NATS). It waits in the lines stream as a `JobLine` until a jobs worker runs it through the
classifier's job lane and a dispatcher; the worker stores the outcome as a `JobResult` in the
results stream (deduplicated by `Nats-Msg-Id` = job id + custom id) before it acks the line, so a
line is never lost and never answered twice. Lines that fail `max_deliver` times go to the
dead-letter stream as a `DeadLetter`.

    client ─POST /v1/files, /v1/batches─► ingress ─Object Store, KV, BatchControl─► jobs worker
    jobs worker ─JobLine─► lines stream ─► jobs worker ─RouteChat (job lane)─► classifier ─► ...
    ... dispatcher ─ReplyResponse─► jobs worker ─JobResult─► results stream ─► output/error files

`Batch`, `FileObject` and the output line types have OpenAI's field names and shapes, so the
official client reads them; they are stored as JSON in the KV bucket (batches) and the Object
Store (files). Every wire message carries `v` and evolves like those of `schemas.wire`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from schemas.wire import WIRE_VERSION, Route

__all__ = [
    "BATCH_ENDPOINT",
    "Batch",
    "BatchControl",
    "BatchError",
    "BatchErrors",
    "BatchLineError",
    "BatchList",
    "BatchOutputLine",
    "BatchRequest",
    "BatchResponse",
    "BatchStatus",
    "CancelBatch",
    "DeadLetter",
    "FileDeleted",
    "FileObject",
    "FinalizeBatch",
    "InputFile",
    "InputLine",
    "JobLine",
    "JobResult",
    "RequestCounts",
    "StartBatch",
    "control_decoder",
    "line_decoder",
    "read_input",
    "result_decoder",
    "window_seconds",
]

#: The one endpoint batch lines may name (`url` of a line, `endpoint` of a batch).
BATCH_ENDPOINT = "/v1/chat/completions"

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]

_WINDOW = re.compile(r"^([1-9][0-9]*)([smh])$")


def window_seconds(window: str) -> int:
    """A completion window (`24h`, `90m`, `30s`) in seconds; ValueError for another form."""
    match = _WINDOW.match(window)
    if match is None:
        raise ValueError(f"completion window {window!r} is not a number followed by s, m or h")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


# --------------------------------------------------------------------------- OpenAI objects


class FileObject(msgspec.Struct, kw_only=True):
    """OpenAI's file object (`POST /v1/files`, `GET /v1/files/{id}`)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class RequestCounts(msgspec.Struct, kw_only=True):
    """A batch's lines: all of them, those answered (HTTP 200) and those that failed."""

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(msgspec.Struct, kw_only=True):
    """Why a batch failed validation (OpenAI's `errors.data[]`); `line` is 1-based."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError] = msgspec.field(default_factory=list)


class Batch(msgspec.Struct, kw_only=True):
    """OpenAI's batch object, as `/v1/batches` answers it and as the KV bucket stores it.

    Timestamps are Unix seconds. `request_counts` is filled in from the results stream when the
    batch is read; the stored copy holds the counts at its last state change.
    """

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = BATCH_ENDPOINT
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class FileDeleted(msgspec.Struct, kw_only=True):
    """OpenAI's answer to `DELETE /v1/files/{id}`."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchRequest(msgspec.Struct, kw_only=True):
    """The body of `POST /v1/batches` (OpenAI's other fields are accepted and ignored)."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchList(msgspec.Struct, kw_only=True):
    """OpenAI's cursor page of `GET /v1/batches`: newest first; the next page starts `after`
    `last_id` while `has_more`."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class BatchResponse(msgspec.Struct, kw_only=True):
    """`response` of an output line: vLLM's status and body (its `model` names the adapter)."""

    status_code: int
    request_id: str
    body: msgspec.Raw


class BatchLineError(msgspec.Struct, kw_only=True):
    """`error` of an output line that got no response (malformed, expired, cancelled, failed)."""

    code: str
    message: str


class BatchOutputLine(msgspec.Struct, kw_only=True):
    """One line of a batch's output or error file, in OpenAI's shape."""

    id: str
    custom_id: str | None
    response: BatchResponse | None = None
    error: BatchLineError | None = None

    @property
    def ok(self) -> bool:
        """True for the output file (an answer with status 200), False for the error file."""
        return self.response is not None and self.response.status_code == 200


# --------------------------------------------------------------------------- JetStream messages


class JobLine(msgspec.Struct, tag="line", kw_only=True):
    """One request of a job, on `<prefix>.jobs.lines.<job>`; published with `Nats-Msg-Id` =
    `<job_id>:<custom_id>` so a repeated submission does not run it twice.

    `expires_at` (Unix seconds) is when the line stops being worth running: past it the worker
    answers it `batch_expired` without calling vLLM. `error` carries a line the submitter
    already found malformed: the worker stores it as failed with that error, so it is counted
    and reaches the error file like any other line.
    """

    v: int = WIRE_VERSION
    job_id: str
    custom_id: str
    body: msgspec.Raw = msgspec.Raw(b"null")
    url: str = BATCH_ENDPOINT
    expires_at: int | None = None
    error: BatchLineError | None = None


class JobResult(msgspec.Struct, tag="result", kw_only=True):
    """A line's outcome, on `<prefix>.jobs.results.<job>.ok` (status 200) or `.err`."""

    v: int = WIRE_VERSION
    job_id: str
    line: BatchOutputLine
    route: Route | None = None
    """What the classifier chose (None for a line that never reached it)."""
    finished_at: int = 0


class DeadLetter(msgspec.Struct, tag="dead", kw_only=True):
    """A line that failed `max_deliver` times or could not be read, on `<prefix>.jobs.dead.<job>`:
    the payload as it was, the last error and how often it was delivered."""

    v: int = WIRE_VERSION
    job_id: str | None
    custom_id: str | None
    payload: bytes
    error: str
    deliveries: int
    stream_seq: int
    at: int


class StartBatch(msgspec.Struct, tag="start", kw_only=True):
    """Validate a new batch's input file and publish its lines (published by the ingress)."""

    v: int = WIRE_VERSION
    batch_id: str


class CancelBatch(msgspec.Struct, tag="cancel", kw_only=True):
    """Answer a cancelling batch's remaining lines `batch_cancelled` and finalize it."""

    v: int = WIRE_VERSION
    batch_id: str


class FinalizeBatch(msgspec.Struct, tag="finalize", kw_only=True):
    """Every line has a result (or the batch expired or was cancelled): write the output and
    error files and set the final status. Idempotent: a second one finds the batch final."""

    v: int = WIRE_VERSION
    batch_id: str


BatchControl = StartBatch | CancelBatch | FinalizeBatch

line_decoder = msgspec.json.Decoder(JobLine)
result_decoder = msgspec.json.Decoder(JobResult)
control_decoder = msgspec.json.Decoder(BatchControl)


# --------------------------------------------------------------------------- input files


class _InputRequest(msgspec.Struct, kw_only=True):
    """One line of a batch input file as OpenAI defines it (other keys are ignored)."""

    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


_input_decoder = msgspec.json.Decoder(_InputRequest)
_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


@dataclass(frozen=True)
class InputLine:
    """A line of an input file: its request, or why it cannot run (`error`; it then goes to the
    error file with `custom_id` when one could be read). `number` is 1-based."""

    number: int
    custom_id: str | None
    body: msgspec.Raw | None = None
    error: BatchLineError | None = None
    url: str | None = None
    is_object: bool = True
    """False for a line that is not a JSON object at all."""


@dataclass(frozen=True)
class InputFile:
    """A batch input file read by `read_input`: its lines, or why the whole file is refused
    (`errors`, OpenAI's codes; the batch then ends `failed`, or the upload is refused)."""

    lines: list[InputLine] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)


def _line_error(
    number: int, custom_id: str | None, message: str, url: str | None = None
) -> InputLine:
    error = BatchLineError(code="invalid_request", message=message)
    return InputLine(number, custom_id, error=error, url=url)


def _string(keys: dict[str, msgspec.Raw], key: str) -> str | None:
    try:
        return msgspec.json.decode(keys[key], type=str) if key in keys else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _read_line(number: int, raw: bytes, max_line_bytes: int) -> InputLine:
    try:
        keys = _object_decoder.decode(raw)
    except RecursionError:  # the decoder recurses even to skip a value; the caps come later
        return _line_error(number, None, f"line {number} nests JSON too deeply to be read")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return InputLine(
            number,
            None,
            error=BatchLineError(
                code="invalid_request", message=f"line {number} is not a JSON object"
            ),
            is_object=False,
        )
    custom_id, url = _string(keys, "custom_id"), _string(keys, "url")
    if len(raw) > max_line_bytes:
        message = f"line {number} has {len(raw)} bytes, more than {max_line_bytes}"
        return _line_error(number, custom_id, message, url)
    try:
        request = _input_decoder.decode(raw)
    except msgspec.ValidationError as error:
        return _line_error(number, custom_id, f"line {number}: {error}", url)
    if request.method != "POST":
        return _line_error(number, custom_id, f"line {number}: method must be POST", url)
    if not bytes(request.body).lstrip().startswith(b"{"):
        return _line_error(number, custom_id, f"line {number}: body must be a JSON object", url)
    return InputLine(number, request.custom_id, body=request.body, url=request.url)


def _file_error(code: str, message: str, param: str | None = None) -> InputFile:
    return InputFile(errors=[BatchError(code=code, message=message, param=param)])


def read_input(data: bytes, *, max_line_bytes: int, max_lines: int) -> InputFile:
    """Read a batch input file (JSONL, one request per line; blank lines are skipped).

    A line that cannot run (not a JSON object, a missing field, a method other than POST, a
    body that is no object, longer than `max_line_bytes`) becomes an `InputLine` with an error;
    the rest of the batch runs. The whole file is refused (`errors`, OpenAI-style codes) when it
    is not UTF-8 JSONL (no line is a JSON object), has no line or more than `max_lines`, names
    several endpoints or one other than `/v1/chat/completions`, or repeats a `custom_id`.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return _file_error("invalid_file", f"the file is not UTF-8 text: {error}")
    lines = [
        _read_line(number, raw.strip(), max_line_bytes)
        for number, raw in enumerate(data.split(b"\n"), start=1)
        if raw.strip()
    ]
    if not lines:
        return _file_error("empty_file", "the file has no lines")
    if len(lines) > max_lines:
        return _file_error(
            "too_many_lines", f"the file has {len(lines)} lines, more than the limit {max_lines}"
        )
    if not any(line.is_object for line in lines):
        return _file_error("invalid_file", "no line is a JSON object: the file is not JSONL")
    urls = sorted({line.url for line in lines if line.url is not None})
    if len(urls) > 1:
        return _file_error(
            "mixed_endpoints", f"the lines name several endpoints: {', '.join(urls)}", "url"
        )
    if urls and urls[0] != BATCH_ENDPOINT:
        return _file_error(
            "invalid_endpoint", f"lines may only name {BATCH_ENDPOINT}, not {urls[0]}", "url"
        )
    errors: list[BatchError] = []
    seen: dict[str, int] = {}
    for line in lines:
        if line.custom_id is None:
            continue
        first = seen.setdefault(line.custom_id, line.number)
        if first != line.number:
            errors.append(
                BatchError(
                    code="duplicate_custom_id",
                    message=f"custom_id {line.custom_id!r} is on lines {first} and {line.number}",
                    param="custom_id",
                    line=line.number,
                )
            )
    return InputFile(lines=lines, errors=errors)
