"""Batches in the KV bucket and files in the Object Store, as the jobs worker reads and writes them.

Every write after a batch's creation is a compare-and-set (`update`): the ingress (cancel) and
several workers change the same batch, so a change is re-applied to the newest value when another
writer came first. Output and error file ids derive from the batch id, so a finalization that is
repeated after a crash overwrites its own files instead of leaving orphans.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import msgspec
from nats.js.api import ObjectMeta
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas.jobs import Batch, BatchStatus, FileObject

__all__ = [
    "FINAL",
    "BatchStore",
    "derived_id",
    "line_request_id",
    "now_s",
    "read_file",
    "write_file",
]

#: States a batch never leaves.
FINAL: frozenset[BatchStatus] = frozenset({"completed", "failed", "expired", "cancelled"})

_batch_decoder = msgspec.json.Decoder(Batch)


def now_s() -> int:
    """Unix time in seconds, the unit of every timestamp of a batch or file."""
    return int(time.time())


def _hex(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:32]


def derived_id(batch_id: str, kind: str) -> str:
    """The file id of a batch's `kind` file (`output`, `error`): `file-<32 hex>`, always the same
    for the same batch."""
    return f"file-{_hex(batch_id, kind)}"


def line_request_id(job_id: str, custom_id: str) -> str:
    """The output line id and request id of one line (`batch_req_<32 hex>`), the same on every
    delivery of the line, so logs of a retried line follow one id."""
    return f"batch_req_{_hex(job_id, custom_id)}"


class BatchStore:
    """The batches KV bucket: key = batch id, value = the `Batch` JSON."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, batch_id: str) -> tuple[Batch, int] | None:
        """The batch and its revision; None when there is no such batch (a raw job)."""
        try:
            entry = await self.kv.get(batch_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return _batch_decoder.decode(entry.value), entry.revision

    async def update(
        self, batch_id: str, change: Callable[[Batch], Batch | None], attempts: int = 20
    ) -> Batch | None:
        """Apply `change` to the newest batch and store it with compare-and-set, retrying when
        another writer came first. `change` returns None to leave the batch as it is; the
        batch as stored (or found) is returned, None when it does not exist."""
        for _ in range(attempts):
            found = await self.read(batch_id)
            if found is None:
                return None
            batch, revision = found
            changed = change(batch)
            if changed is None:
                return batch
            try:
                await self.kv.update(batch_id, msgspec.json.encode(changed), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return changed
        raise RuntimeError(f"batch {batch_id}: {attempts} concurrent writers in a row")


async def read_file(files: ObjectStore, file_id: str) -> bytes | None:
    """A stored file's content; None when it is missing or deleted."""
    try:
        result = await files.get(file_id)
    except (NotFoundError, KeyNotFoundError):
        return None
    if result.info.deleted:
        return None
    return result.data


async def write_file(
    files: ObjectStore, file_id: str, filename: str, purpose: str, data: bytes
) -> FileObject:
    """Store `data` as `file_id`, its `FileObject` JSON in the object's description."""
    file = FileObject(
        id=file_id, bytes=len(data), created_at=now_s(), filename=filename, purpose=purpose
    )
    meta = ObjectMeta(name=file_id, description=msgspec.json.encode(file).decode())
    await files.put(file_id, data, meta=meta)
    return file
