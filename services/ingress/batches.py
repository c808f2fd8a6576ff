"""The Batch API's batches (`/v1/batches`): create, read, list, cancel, on the jobs' KV bucket.

The ingress only creates and cancels; the jobs worker runs the lines and moves a batch through
its other states (`in_progress`, `finalizing`, `completed`, ...), all by compare-and-set on the
batch's KV entry. Creating stores the batch as `validating` and publishes `StartBatch`;
cancelling sets `cancelling` and publishes `CancelBatch` (both deduplicated by `Nats-Msg-Id`, so
a repeated request is harmless). `request_counts.completed` and `.failed` come from the results
stream whenever a batch is read. Every method answers a value or an `ErrorResponse`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from schemas.config import Jobs, Limits
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.jobs import (
    BATCH_ENDPOINT,
    Batch,
    BatchControl,
    BatchError,
    BatchErrors,
    BatchList,
    BatchRequest,
    CancelBatch,
    InputLine,
    StartBatch,
    window_seconds,
)
from services.common.jetstream import bucket_keys, result_counts
from services.common.limits import depth_error, too_deep
from services.common.subjects import Subjects
from services.ingress.files import (
    BUS_ERRORS,
    Files,
    input_refused,
    read_input_file,
    unavailable,
)

__all__ = [
    "MAX_LIST_LIMIT",
    "Batches",
    "new_batch_id",
    "parse_batch_request",
    "refused_model",
]

#: `GET /v1/batches?limit=` at most (OpenAI's bound).
MAX_LIST_LIMIT = 100
#: OpenAI's bounds on `metadata`.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
#: Compare-and-set attempts before a cancel gives up (another writer won every time).
_CAS_TRIES = 8
#: The states a batch may be cancelled from.
_CANCELLABLE = ("validating", "in_progress")

_BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
#: The field a msgspec validation error names: a missing one, or where a wrong value sits.
_FIELD = re.compile(r"missing required field `(\w+)`|at `\$\.(\w+)")
_request_decoder = msgspec.json.Decoder(BatchRequest)
_batch_decoder = msgspec.json.Decoder(Batch)
_encoder = msgspec.json.Encoder()


def new_batch_id() -> str:
    """A new batch id, `batch_<32 hex>`: the creation time in milliseconds, then randomness, so
    the ids sort as the batches were created (which is how `list` pages through them)."""
    return f"batch_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _bad(message: str, param: str | None) -> ErrorResponse:
    return error_response(ErrorKind.BAD_REQUEST, message, param)


class _LineModel(msgspec.Struct):
    model: str | None = None


_line_model = msgspec.json.Decoder(_LineModel)


def refused_model(
    lines: list[InputLine], permits: Callable[[str | None], bool]
) -> ErrorResponse | None:
    """The 403 for the first line whose `model` the caller's API key may not use (`permits`),
    or None. A line whose body has no readable `model` is left to fail on its own."""
    for line in lines:
        if line.body is None:
            continue
        try:
            model = _line_model.decode(line.body).model
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if not permits(model):
            return error_response(
                ErrorKind.PERMISSION_DENIED,
                f"Line {line.number} of the input file names the model `{model}`, which this "
                "API key may not use.",
                "input_file_id",
            )
    return None


def _no_such_batch(batch_id: str) -> ErrorResponse:
    return error_response(ErrorKind.NOT_FOUND, f"No batch found with id '{batch_id}'.", "batch_id")


def parse_batch_request(
    body: bytes, max_depth: int = Limits().max_json_depth
) -> BatchRequest | ErrorResponse:
    """The body of `POST /v1/batches`, or the 400 naming the field that is wrong (`body` for
    nesting deeper than `max_depth`)."""
    if too_deep(body, max_depth):
        return depth_error(max_depth)
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as error:
        named = _FIELD.search(str(error))
        param = (named.group(1) or named.group(2)) if named else None
        return error_response(ErrorKind.VALIDATION, str(error), param)
    except msgspec.DecodeError as error:
        return error_response(ErrorKind.VALIDATION, f"The body is not valid JSON: {error}")
    metadata = request.metadata or {}
    if len(metadata) > _METADATA_PAIRS:
        return _bad(f"'metadata' has {len(metadata)} pairs, at most 16 are allowed.", "metadata")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY or len(value) > _METADATA_VALUE:
            return _bad(
                f"'metadata' key {key[:80]!r}: keys may have 64 characters, values 512.",
                "metadata",
            )
    return request


class Batches:
    """The batches of the Batch API: `kv` holds them, `js` carries their control messages."""

    def __init__(
        self, js: JetStreamContext, subjects: Subjects, jobs: Jobs, kv: KeyValue, files: Files
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.jobs = jobs
        self.kv = kv
        self.files = files

    async def create(
        self, request: BatchRequest, permits: Callable[[str | None], bool] | None = None
    ) -> Batch | ErrorResponse:
        """Validate the input file and start the batch: 400 for a wrong endpoint or window or a
        file `read_input` refuses, 403 for a line naming a model `permits` refuses (the
        caller's API key), 404 for an unknown file, 503 when JetStream fails."""
        if request.endpoint != BATCH_ENDPOINT:
            return _bad(
                f"Invalid value for 'endpoint': {request.endpoint!r}; this server supports "
                f"only {BATCH_ENDPOINT!r}.",
                "endpoint",
            )
        if request.completion_window not in self.jobs.completion_windows:
            allowed = ", ".join(repr(w) for w in self.jobs.completion_windows)
            return _bad(
                f"Invalid value for 'completion_window': {request.completion_window!r}; "
                f"supported values are {allowed}.",
                "completion_window",
            )
        file = await self.files.retrieve(request.input_file_id, "input_file_id")
        if isinstance(file, ErrorResponse):
            return file
        if file.purpose != "batch":
            return _bad(
                f"File {file.id} has purpose {file.purpose!r}; a batch needs a file uploaded "
                "with purpose 'batch'.",
                "input_file_id",
            )
        data = await self.files.content(file.id)
        if isinstance(data, ErrorResponse):
            return data
        read = await read_input_file(data, self.jobs)
        if read.errors:
            return input_refused(read.errors, "input_file_id")
        if permits is not None:
            refused = refused_model(read.lines, permits)
            if refused is not None:
                return refused
        now = int(time.time())
        batch = Batch(
            id=new_batch_id(),
            input_file_id=file.id,
            completion_window=request.completion_window,
            created_at=now,
            expires_at=now + window_seconds(request.completion_window),
            metadata=request.metadata,
        )
        try:
            revision = await self.kv.create(batch.id, _encoder.encode(batch))
        except BUS_ERRORS as error:
            return unavailable(error)
        try:
            await self._publish(StartBatch(batch_id=batch.id), f"start:{batch.id}")
        except BUS_ERRORS as error:
            await self._fail_unstarted(batch, revision)
            return unavailable(error)
        return batch

    async def retrieve(self, batch_id: str) -> Batch | ErrorResponse:
        """The batch with its current counts; 404 when there is none."""
        found = await self._get(batch_id)
        if isinstance(found, ErrorResponse):
            return found
        try:
            return await self._with_counts(found[0])
        except BUS_ERRORS as error:
            return unavailable(error)

    async def list(self, after: str | None, limit: int) -> BatchList | ErrorResponse:
        """Up to `limit` batches, newest first, starting after the batch `after` (which need not
        exist any more: the page starts at the next older id)."""
        try:
            keys = await bucket_keys(self.js, self.subjects.batches_bucket)
        except BUS_ERRORS as error:
            return unavailable(error)
        older = sorted(
            (key for key in keys if _BATCH_ID.match(key) and (after is None or key < after)),
            reverse=True,
        )
        page: list[Batch] = []
        for key in older:
            if len(page) > limit:
                break
            found = await self._get(key)
            if isinstance(found, tuple):
                page.append(found[0])
            elif found.status != 404:
                return found
        has_more, page = len(page) > limit, page[:limit]
        try:
            data = list(await asyncio.gather(*(self._with_counts(b) for b in page)))
        except BUS_ERRORS as error:
            return unavailable(error)
        return BatchList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )

    async def cancel(self, batch_id: str) -> Batch | ErrorResponse:
        """Move the batch to `cancelling` (from `validating` or `in_progress`; again for one
        already cancelling) and tell the jobs worker; 409 for a batch that has ended."""
        for _ in range(_CAS_TRIES):
            found = await self._get(batch_id)
            if isinstance(found, ErrorResponse):
                return found
            batch, revision = found
            if batch.status == "cancelling":
                break
            if batch.status not in _CANCELLABLE:
                return error_response(
                    ErrorKind.CONFLICT, f"Cannot cancel a batch with status '{batch.status}'."
                )
            batch = msgspec.structs.replace(
                batch, status="cancelling", cancelling_at=int(time.time())
            )
            try:
                await self.kv.update(batch_id, _encoder.encode(batch), last=revision)
            except KeyWrongLastSequenceError:
                continue  # the worker moved it meanwhile: look again
            except BUS_ERRORS as error:
                return unavailable(error)
            break
        else:
            return error_response(
                ErrorKind.CONFLICT, "The batch kept changing while being cancelled; retry."
            )
        try:
            # Also for a batch already cancelling: its first CancelBatch may have been lost,
            # and a repeated one is dropped by the stream's deduplication.
            await self._publish(CancelBatch(batch_id=batch_id), f"cancel:{batch_id}")
            return await self._with_counts(batch)
        except BUS_ERRORS as error:
            return unavailable(error)

    async def _get(self, batch_id: str) -> tuple[Batch, int] | ErrorResponse:
        """The stored batch and its revision; 404 when there is none, 503 on failure."""
        if not _BATCH_ID.match(batch_id):
            return _no_such_batch(batch_id)
        try:
            entry = await self.kv.get(batch_id)
        except NotFoundError:
            return _no_such_batch(batch_id)
        except BUS_ERRORS as error:
            return unavailable(error)
        if entry.value is None or entry.revision is None:
            return _no_such_batch(batch_id)
        return _batch_decoder.decode(entry.value), entry.revision

    async def _with_counts(self, batch: Batch) -> Batch:
        counts = await result_counts(self.js, self.subjects, batch.id)
        counts.total = batch.request_counts.total
        return msgspec.structs.replace(batch, request_counts=counts)

    async def _publish(self, message: BatchControl, msg_id: str) -> None:
        await self.js.publish(
            self.subjects.jobs_control,
            _encoder.encode(message),
            headers={Header.MSG_ID.value: msg_id},
        )

    async def _fail_unstarted(self, batch: Batch, revision: int) -> None:
        """Mark a batch whose `StartBatch` could not be published `failed`, unless a worker got
        it after all and moved it on (best effort: the bus that refused the publish may refuse
        this too; the batch then stays validating)."""
        error = BatchError(code="unavailable", message="The batch could not be started; retry.")
        failed = msgspec.structs.replace(
            batch, status="failed", failed_at=int(time.time()), errors=BatchErrors(data=[error])
        )
        try:
            await self.kv.update(batch.id, _encoder.encode(failed), last=revision)
        except BUS_ERRORS as error:
            unavailable(error)
