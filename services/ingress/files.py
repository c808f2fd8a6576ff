"""The Batch API's files (`/v1/files`): upload, read, download, delete, on the jobs' Object Store.

An upload must be a batch input file (`purpose` `batch`) no larger than `jobs.max_file_bytes`
that `schemas.jobs.read_input` accepts as a whole (JSONL, one endpoint, no repeated
`custom_id`, at most `jobs.max_lines` lines); a malformed line is not a reason to refuse it, it
goes to the batch's error file. Output and error files the jobs worker wrote are read the same
way. Every method answers a value or an `ErrorResponse`; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import re

import nats.errors
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from schemas.config import Jobs
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.jobs import BatchError, FileDeleted, FileObject, InputFile, read_input
from services.common.filestore import file_bytes, file_object, put_file
from services.common.log import get_logger

__all__ = [
    "BUS_ERRORS",
    "Files",
    "file_too_large",
    "input_refused",
    "read_input_file",
    "unavailable",
]

#: What nats-py raises when JetStream cannot answer (down, reconnecting, timed out).
BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)

_log = get_logger()
_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


def unavailable(error: BaseException) -> ErrorResponse:
    """The 503 for a JetStream call that failed (logged here, once)."""
    _log.warning("jetstream_failed", error=repr(error))
    return error_response(
        ErrorKind.UNAVAILABLE, "The job store (NATS JetStream) is not reachable; retry shortly."
    )


def file_too_large(size: int | None, limit: int) -> ErrorResponse:
    """The 413 for an upload of `size` bytes (None: unknown, cut while reading)."""
    what = f"{size} bytes" if size is not None else "more bytes"
    return error_response(
        ErrorKind.TOO_LARGE, f"The file is too large: {what}, the limit is {limit} bytes.", "file"
    )


def input_refused(errors: list[BatchError], param: str) -> ErrorResponse:
    """The 400 for an input file that `read_input` refuses as a whole."""
    shown = "; ".join(error.message for error in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return error_response(
        ErrorKind.BAD_REQUEST, f"The file is not a valid batch input file: {shown}{more}", param
    )


async def read_input_file(data: bytes, jobs: Jobs) -> InputFile:
    """`read_input` with the configured limits, off the event loop (a large file takes a while)."""
    return await asyncio.to_thread(
        read_input, data, max_line_bytes=jobs.max_line_bytes, max_lines=jobs.max_lines
    )


def _no_such_file(file_id: str, param: str = "file_id") -> ErrorResponse:
    return error_response(ErrorKind.NOT_FOUND, f"No such File object: {file_id}", param)


class Files:
    """The files of the Batch API, on the Object Store `store`."""

    def __init__(self, store: ObjectStore, jobs: Jobs) -> None:
        self.store = store
        self.jobs = jobs

    async def upload(self, data: bytes, filename: str, purpose: str) -> FileObject | ErrorResponse:
        """Store an uploaded batch input file; 400 for another purpose or a file `read_input`
        refuses, 413 beyond `jobs.max_file_bytes`, 503 when JetStream fails."""
        if purpose != "batch":
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"Invalid value for 'purpose': {purpose!r}; this server accepts only 'batch'.",
                "purpose",
            )
        if len(data) > self.jobs.max_file_bytes:
            return file_too_large(len(data), self.jobs.max_file_bytes)
        read = await read_input_file(data, self.jobs)
        if read.errors:
            return input_refused(read.errors, "file")
        try:
            return await put_file(
                self.store,
                data,
                filename=filename or "input.jsonl",
                purpose=purpose,
                kept_s=self.jobs.retention_s,
            )
        except BUS_ERRORS as error:
            return unavailable(error)

    async def retrieve(self, file_id: str, param: str = "file_id") -> FileObject | ErrorResponse:
        """The file's `FileObject`; 404 when there is none."""
        if not _FILE_ID.match(file_id):
            return _no_such_file(file_id, param)
        try:
            found = await file_object(self.store, file_id)
        except BUS_ERRORS as error:
            return unavailable(error)
        return found if found is not None else _no_such_file(file_id, param)

    async def content(self, file_id: str) -> bytes | ErrorResponse:
        """The file's bytes; 404 when there is none."""
        if not _FILE_ID.match(file_id):
            return _no_such_file(file_id)
        try:
            found = await file_bytes(self.store, file_id)
        except BUS_ERRORS as error:
            return unavailable(error)
        return found if found is not None else _no_such_file(file_id)

    async def delete(self, file_id: str) -> FileDeleted | ErrorResponse:
        """Delete the file (a batch already reading it keeps what it read); 404 when none."""
        found = await self.retrieve(file_id)
        if isinstance(found, ErrorResponse):
            return found
        try:
            await self.store.delete(file_id)
        except NotFoundError:
            return _no_such_file(file_id)
        except BUS_ERRORS as error:
            return unavailable(error)
        return FileDeleted(id=file_id)
