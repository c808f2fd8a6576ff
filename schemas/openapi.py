"""The ingress's HTTP API as an OpenAPI 3.1 document, generated from the Structs of `schemas/`.

Every body the ingress reads or writes is a Struct here (`openai`, `classify`, `jobs`,
`errors`); `document()` lists the operations the ingress serves and lets msgspec write their
JSON Schemas (`msgspec.json.schema_components`), so the document cannot drift from the types
the ingress decodes with. The ingress serves it at `GET /openapi.json`; `loraroute openapi`
prints it; `loadtest/fuzz_api.py` generates requests from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas import classify, jobs
from schemas.errors import ErrorResponse
from schemas.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelList,
)

__all__ = ["OPERATIONS", "Operation", "document", "document_bytes"]

_JSON = "application/json"
_REF = "#/components/schemas/{name}"


class HealthStatus(msgspec.Struct):
    """`GET /health`."""

    status: str


class Readiness(msgspec.Struct):
    """`GET /ready`: `ready`, then one boolean per check (`nats`, the classifier, each base
    model's dispatchers), or `draining` while the process stops."""

    ready: bool


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it reads and what it answers."""

    method: str
    path: str
    summary: str
    body: type | None = None
    answer: type | None = None
    #: Media type of a 200 answer that is not JSON (SSE, file bytes, Prometheus text).
    raw_answer: str | None = None
    upload: bool = False
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    #: Statuses the operation may answer with an `ErrorResponse` besides 500.
    errors: tuple[int, ...] = ()
    examples: dict[str, Any] = field(default_factory=dict)


_SERVICE = (503, 504)
_CHAT_EXAMPLE = {
    "model": "MoM",
    "messages": [{"role": "user", "content": "What causes high blood pressure?"}],
    "max_tokens": 16,
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/v1/chat/completions",
        "Classify the request's domain, choose the adapter, and answer through vLLM (JSON, or "
        "SSE with `stream: true`).",
        body=ChatCompletionRequest,
        answer=ChatCompletionResponse,
        errors=(400, 404, 413, 429, 499, 502, *_SERVICE),
        examples={"auto": _CHAT_EXAMPLE, "stream": {**_CHAT_EXAMPLE, "stream": True}},
    ),
    Operation("get", "/v1/models", "The auto names, base models and adapters.", answer=ModelList),
    Operation("get", "/health", "The process is up.", answer=HealthStatus),
    Operation(
        "get",
        "/ready",
        "NATS, a classifier and every base model's dispatcher answer.",
        answer=Readiness,
    ),
    Operation(
        "post",
        "/api/v1/classify/intent",
        "One text's category, without generation.",
        body=classify.ClassifyIntentRequest,
        answer=classify.IntentResponse,
        errors=(400, 413, 429, *_SERVICE),
        examples={"text": {"text": "What causes high blood pressure?"}},
    ),
    Operation(
        "post",
        "/api/v1/classify/batch",
        "Several texts' categories (at most `ingress.max_classify_texts`).",
        body=classify.ClassifyBatchRequest,
        answer=classify.BatchResponse,
        errors=(400, 413, 429, *_SERVICE),
        examples={"texts": {"texts": ["What causes high blood pressure?", "Hello"]}},
    ),
    Operation("get", "/metrics", "Prometheus metrics.", raw_answer="text/plain"),
    Operation("get", "/openapi.json", "This document.", raw_answer=_JSON),
    Operation(
        "post",
        "/v1/files",
        "Upload a batch input file (multipart: `file`, `purpose=batch`).",
        upload=True,
        answer=jobs.FileObject,
        errors=(400, 413, 503),
    ),
    Operation(
        "get", "/v1/files/{file_id}", "A file object.", answer=jobs.FileObject, errors=(404, 503)
    ),
    Operation(
        "delete",
        "/v1/files/{file_id}",
        "Delete a file.",
        answer=jobs.FileDeleted,
        errors=(404, 503),
    ),
    Operation(
        "get",
        "/v1/files/{file_id}/content",
        "A file's bytes as stored.",
        raw_answer="application/octet-stream",
        errors=(404, 503),
    ),
    Operation(
        "post",
        "/v1/batches",
        "Validate the input file and start the batch.",
        body=jobs.BatchRequest,
        answer=jobs.Batch,
        errors=(400, 404, 413, 503),
        examples={
            "batch": {
                "input_file_id": "file-0",
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
        },
    ),
    Operation(
        "get",
        "/v1/batches",
        "Batches, newest first.",
        answer=jobs.BatchList,
        query=(
            ("after", {"type": "string"}),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
        ),
        errors=(400, 503),
    ),
    Operation(
        "get",
        "/v1/batches/{batch_id}",
        "A batch and its counts.",
        answer=jobs.Batch,
        errors=(404, 503),
    ),
    Operation(
        "post",
        "/v1/batches/{batch_id}/cancel",
        "Cancel a batch.",
        answer=jobs.Batch,
        errors=(404, 409, 503),
    ),
)

_REASONS = {
    400: "Invalid request",
    404: "Unknown model, file or batch",
    409: "Conflict with the object's state",
    413: "Body too large",
    429: "Too many requests waiting",
    499: "The client closed its connection",
    500: "Internal error",
    502: "vLLM failed",
    503: "A service is unavailable",
    504: "Deadline passed",
}


def _operation(op: Operation, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(op.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query
    ]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        content: dict[str, Any] = {"schema": refs[op.body]}
        if op.examples:
            content["examples"] = {k: {"value": v} for k, v in op.examples.items()}
        out["requestBody"] = {"required": True, "content": {_JSON: content}}
    elif op.upload:
        form = {
            "type": "object",
            "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"type": "string", "enum": ["batch"]},
            },
        }
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if op.answer is not None:
        ok["content"] = {_JSON: {"schema": refs[op.answer]}}
        if op.body is ChatCompletionRequest:
            ok["content"]["text/event-stream"] = {
                "schema": {"type": "string", "description": "SSE of `ChatCompletionChunk`s"}
            }
    elif op.raw_answer is not None:
        ok["content"] = {op.raw_answer: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": ok}
    for status in sorted({*op.errors, 500}):
        responses[str(status)] = {
            "description": _REASONS.get(status, "Error"),
            "content": {_JSON: {"schema": refs[ErrorResponse]}},
        }
    out["responses"] = responses
    return out


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _operation_id(op: Operation) -> str:
    words = [p.strip("{}") for p in op.path.split("/") if p and p not in {"v1", "api"}]
    return "_".join([op.method, *words]).replace(".", "_").replace("-", "_")


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingress."""
    types: list[type] = [ErrorResponse, ChatCompletionChunk]
    for op in OPERATIONS:
        for kind in (op.body, op.answer):
            if kind is not None and kind not in types:
                types.append(kind)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loraroute",
            "version": version,
            "description": "Intent-aware LoRA routing for vLLM: the OpenAI-compatible API of "
            "the ingress, the classification API and the OpenAI Batch API.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def document_bytes() -> bytes:
    """`document()` as JSON."""
    return msgspec.json.encode(document())
