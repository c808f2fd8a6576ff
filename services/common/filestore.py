"""The Batch API's files in the jobs' Object Store: the bytes under the file id, and OpenAI's
`FileObject` as JSON in the object's description, so reading a file's metadata reads no chunk.

The ingress stores uploads here (`purpose` `batch`); the jobs worker stores each batch's output
and error files the same way (`batch_output`). Errors from nats-py pass through; callers turn
them into their own kinds.
"""

from __future__ import annotations

import io
import time
import uuid

import msgspec
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from schemas.jobs import FileObject

__all__ = ["file_bytes", "file_object", "new_file_id", "put_file"]


def new_file_id() -> str:
    """A new file id, `file-<32 hex>`."""
    return f"file-{uuid.uuid4().hex}"


async def put_file(
    store: ObjectStore,
    data: bytes,
    *,
    filename: str,
    purpose: str,
    file_id: str | None = None,
    kept_s: float | None = None,
) -> FileObject:
    """Store `data` as a new file (or as `file_id`, replacing it) and return its `FileObject`;
    `kept_s` is how long the bucket keeps it (its TTL), shown as `expires_at`."""
    now = int(time.time())
    file = FileObject(
        id=file_id or new_file_id(),
        bytes=len(data),
        created_at=now,
        filename=filename,
        purpose=purpose,
        expires_at=None if kept_s is None else now + int(kept_s),
    )
    description = msgspec.json.encode(file).decode()
    await store.put(file.id, data, meta=ObjectMeta(name=file.id, description=description))
    return file


async def file_object(store: ObjectStore, file_id: str) -> FileObject | None:
    """The `FileObject` of `file_id`; None when there is no such file (or it was deleted)."""
    try:
        info = await store.get_info(file_id)
    except NotFoundError:
        return None
    if not info.description:
        return None
    try:
        return msgspec.json.decode(info.description, type=FileObject)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def file_bytes(store: ObjectStore, file_id: str) -> bytes | None:
    """The content of `file_id`; None when there is no such file (or it was deleted)."""
    sink = io.BytesIO()
    try:
        # Into a buffer: without one, nats-py concatenates the chunks (quadratic in the size).
        await store.get(file_id, writeinto=sink)
    except NotFoundError:
        return None
    return sink.getvalue()
