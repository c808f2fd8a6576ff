"""The HTTP entry points of the OpenAI Batch API: read the request, call `Files` or `Batches`,
send the answer (the object as JSON, or the error with its status).

An upload is refused by its declared size before it is read (413), and cut off once more bytes
arrive than the limit allows; the multipart form is parsed by Starlette (python-multipart),
which keeps the file part in a spooled temporary file, not in memory.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute
from starlette.types import Message

from schemas.errors import ErrorKind, ErrorResponse, error_response
from services.common.log import get_logger
from services.ingress import headers
from services.ingress.auth import Keyring, api_key
from services.ingress.batches import MAX_LIST_LIMIT, Batches, parse_batch_request
from services.ingress.files import Files, file_too_large
from services.ingress.metrics import IngressMetrics
from services.ingress.validation import check_content_type, too_large

__all__ = ["BATCH_ROUTES", "BatchApi"]

_JSON = "application/json"
_log = get_logger()
#: Bytes a multipart upload may carry beyond its file: the boundaries, part headers and the
#: `purpose` field.
_FORM_OVERHEAD = 64 * 1024
#: The largest JSON body of `POST /v1/batches` (ids, a window and 16 metadata pairs).
_BATCH_BODY_LIMIT = 64 * 1024


@dataclass(slots=True)
class BatchApi:
    """What the Batch API's routes need, built once by the app's lifespan."""

    files: Files
    batches: Batches
    metrics: IngressMetrics
    #: The model a line without `model` runs on (`default_model`), for the key's model check.
    default_model: str = ""


class _TooLarge(Exception):
    """The upload sent more bytes than the limit allows."""


def _api(request: Request) -> BatchApi:
    api: BatchApi = request.app.state.batch_api
    return api


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type=_JSON)


def _answer(value: Any) -> Response:
    if isinstance(value, ErrorResponse):
        return _json(value, value.status)
    return _json(value)


def _observed(
    route: str, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def observed(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        _api(request).metrics.observe(route, response.status_code, time.perf_counter() - started)
        ids = headers.request_ids(request.headers.get(headers.REQUEST_ID))
        for name, value in ids.response_headers().items():
            response.headers.setdefault(name, value)
        return response

    return observed


async def _form(request: Request, limit: int) -> FormData | ErrorResponse:
    """The multipart form of an upload whose file may have up to `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
        return file_too_large(int(declared), limit)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        return error_response(
            ErrorKind.VALIDATION, "Files are uploaded as multipart/form-data.", "file"
        )
    received = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit + _FORM_OVERHEAD:
            raise _TooLarge
        return message

    try:
        return await Request(request.scope, counted).form(max_files=1, max_fields=8)
    except _TooLarge:
        return file_too_large(None, limit)
    except (MultiPartException, HTTPException) as error:
        detail = error.message if isinstance(error, MultiPartException) else error.detail
        return error_response(ErrorKind.VALIDATION, f"Malformed multipart form: {detail}", "file")


async def create_file(request: Request) -> Response:
    """`POST /v1/files`: a multipart upload with `file` and `purpose`."""
    api = _api(request)
    form = await _form(request, api.files.jobs.max_file_bytes)
    if isinstance(form, ErrorResponse):
        return _answer(form)
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            return _answer(error_response(ErrorKind.VALIDATION, "'file' is required.", "file"))
        if not isinstance(purpose, str):
            return _answer(
                error_response(ErrorKind.VALIDATION, "'purpose' is required.", "purpose")
            )
        data = await upload.read()
        return _answer(await api.files.upload(data, upload.filename or "", purpose))
    finally:
        await form.close()


async def retrieve_file(request: Request) -> Response:
    """`GET /v1/files/{file_id}`: the file object."""
    return _answer(await _api(request).files.retrieve(request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    """`GET /v1/files/{file_id}/content`: the file's bytes as they were stored."""
    content = await _api(request).files.content(request.path_params["file_id"])
    if isinstance(content, ErrorResponse):
        return _answer(content)
    return Response(content, 200, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    """`DELETE /v1/files/{file_id}`: OpenAI's deleted object."""
    return _answer(await _api(request).files.delete(request.path_params["file_id"]))


async def create_batch(request: Request) -> Response:
    """`POST /v1/batches`: validate the input file and start the batch."""
    wrong_type = check_content_type(request.headers.get("content-type"))
    if wrong_type is not None:
        return _answer(wrong_type)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _BATCH_BODY_LIMIT:
            return _answer(too_large(None, _BATCH_BODY_LIMIT))
        chunks.append(chunk)
    depth = request.app.state.ingress.config.limits.max_json_depth
    parsed = parse_batch_request(b"".join(chunks), depth)
    if isinstance(parsed, ErrorResponse):
        return _answer(parsed)
    api = _api(request)
    key = api_key(request.scope)
    if key is None or key.models is None:
        return _answer(await api.batches.create(parsed))

    def permits(model: str | None) -> bool:
        return Keyring.allows(key, model or api.default_model)

    answer = await api.batches.create(parsed, permits)
    if isinstance(answer, ErrorResponse) and answer.status == 403:
        api.metrics.refused("model")
        _log.info("model_refused", key=key.name, batch_input=parsed.input_file_id)
    return _answer(answer)


async def retrieve_batch(request: Request) -> Response:
    """`GET /v1/batches/{batch_id}`: the batch with its current counts."""
    return _answer(await _api(request).batches.retrieve(request.path_params["batch_id"]))


async def list_batches(request: Request) -> Response:
    """`GET /v1/batches?after=ID&limit=N`: newest first, `limit` 1 to 100 (default 20)."""
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        return _answer(
            error_response(
                ErrorKind.BAD_REQUEST,
                f"Invalid 'limit': {raw!r}; it must be between 1 and {MAX_LIST_LIMIT}.",
                "limit",
            )
        )
    after = request.query_params.get("after") or None
    return _answer(await _api(request).batches.list(after, int(raw)))


async def cancel_batch(request: Request) -> Response:
    """`POST /v1/batches/{batch_id}/cancel`: the batch, now `cancelling`."""
    return _answer(await _api(request).batches.cancel(request.path_params["batch_id"]))


BATCH_ROUTES = [
    HttpRoute("/v1/files", _observed("files", create_file), methods=["POST"]),
    HttpRoute("/v1/files/{file_id}", _observed("files", retrieve_file), methods=["GET"]),
    HttpRoute("/v1/files/{file_id}", _observed("files", delete_file), methods=["DELETE"]),
    HttpRoute("/v1/files/{file_id}/content", _observed("files", file_content), methods=["GET"]),
    HttpRoute("/v1/batches", _observed("batches", create_batch), methods=["POST"]),
    HttpRoute("/v1/batches", _observed("batches", list_batches), methods=["GET"]),
    HttpRoute("/v1/batches/{batch_id}", _observed("batches", retrieve_batch), methods=["GET"]),
    HttpRoute(
        "/v1/batches/{batch_id}/cancel", _observed("batches", cancel_batch), methods=["POST"]
    ),
]
