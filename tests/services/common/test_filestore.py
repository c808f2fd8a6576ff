"""`services.common.filestore` on a real Object Store bucket."""

from __future__ import annotations

import os
import uuid

import pytest
from nats.aio.client import Client

from schemas.config import Jobs
from services.common.filestore import file_bytes, file_object, new_file_id, put_file
from services.common.jetstream import ensure_job_resources
from services.common.subjects import Subjects

pytestmark = pytest.mark.integration


async def test_a_file_keeps_its_object_beside_its_bytes_until_deleted(client: Client) -> None:
    subjects = Subjects(f"t{uuid.uuid4().hex[:8]}")
    store = (await ensure_job_resources(client.jetstream(), subjects, Jobs())).files
    data = os.urandom(300 * 1024)  # several chunks
    stored = await put_file(store, data, filename="b.jsonl", purpose="batch_output", kept_s=60)
    assert stored.id.startswith("file-") and stored.bytes == len(data)
    assert stored.expires_at == stored.created_at + 60
    assert await file_object(store, stored.id) == stored
    assert await file_bytes(store, stored.id) == data
    empty = await put_file(store, b"", filename="e.jsonl", purpose="batch_output")
    assert await file_bytes(store, empty.id) == b"" and empty.expires_at is None
    await store.delete(stored.id)
    assert await file_object(store, stored.id) is None
    assert await file_bytes(store, stored.id) is None
    assert await file_object(store, new_file_id()) is None
