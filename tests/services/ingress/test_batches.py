"""`services.ingress.batches` and `services.ingress.files` as plain modules: the request parser
without a network, the batch store against a real nats-server (no HTTP in between)."""

from __future__ import annotations

import json
import re
import time
import uuid

import msgspec
import pytest
from nats.aio.client import Client

from schemas.config import Jobs
from schemas.errors import ErrorResponse
from schemas.jobs import Batch, BatchRequest
from services.common.jetstream import ensure_job_resources
from services.common.subjects import Subjects
from services.ingress.batches import Batches, new_batch_id, parse_batch_request
from services.ingress.files import Files

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "MoM", "messages": [{"role": "user", "content": "hi"}]},
}


def _body(**fields: object) -> bytes:
    base = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}
    return json.dumps({**base, "completion_window": "24h", **fields}).encode()


def test_a_batch_request_is_parsed_with_openai_fields_ignored() -> None:
    parsed = parse_batch_request(_body(metadata={"a": "b"}, output_expires_after={"x": 1}))
    assert parsed == BatchRequest(
        input_file_id="file-x",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"a": "b"},
    )
    assert isinstance(
        parse_batch_request(_body(metadata={str(i): "v" for i in range(16)})), BatchRequest
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"endpoint": "/v1/chat/completions", "completion_window": "24h"}', "input_file_id"),
        (_body(completion_window=24), "completion_window"),
        (b"{not json", None),
        (_body(metadata={str(i): "v" for i in range(17)}), "metadata"),
        (_body(metadata={"k" * 65: "v"}), "metadata"),
        (_body(metadata={"k": 1}), "metadata"),
    ],
    ids=["missing", "type", "json", "pairs", "key", "value-type"],
)
def test_a_wrong_batch_request_is_a_400_naming_the_field(body: bytes, param: str | None) -> None:
    parsed = parse_batch_request(body)
    assert isinstance(parsed, ErrorResponse) and parsed.status == 400
    assert parsed.error.param == param


def test_batch_ids_sort_as_they_were_made() -> None:
    ids = []
    for _ in range(3):
        ids.append(new_batch_id())
        time.sleep(0.002)
    assert all(re.fullmatch(r"batch_[0-9a-f]{32}", i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 3


@pytest.fixture
async def store(client: Client) -> tuple[Batches, Subjects]:
    js, subjects, jobs = client.jetstream(), Subjects(f"t{uuid.uuid4().hex[:8]}"), Jobs()
    resources = await ensure_job_resources(js, subjects, jobs)
    files = Files(resources.files, jobs)
    return Batches(js, subjects, jobs, resources.batches, files), subjects


async def _create(batches: Batches) -> Batch:
    file = await batches.files.upload(json.dumps(LINE).encode(), "in.jsonl", "batch")
    assert not isinstance(file, ErrorResponse)
    request = BatchRequest(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await batches.create(request)
    assert isinstance(batch, Batch), batch
    return batch


@pytest.mark.integration
async def test_listing_skips_removed_batches_and_pages_past_a_removed_cursor(
    store: tuple[Batches, Subjects],
) -> None:
    batches, _ = store
    made = [(await _create(batches)).id for _ in range(4)]
    await batches.kv.delete(made[2])
    listed = await batches.list(None, 10)
    assert not isinstance(listed, ErrorResponse)
    assert [b.id for b in listed.data] == [made[3], made[1], made[0]]
    after_removed = await batches.list(made[2], 1)
    assert not isinstance(after_removed, ErrorResponse)
    assert [b.id for b in after_removed.data] == [made[1]] and after_removed.has_more
    missing = await batches.retrieve(made[2])
    assert isinstance(missing, ErrorResponse) and missing.status == 404


@pytest.mark.integration
async def test_a_batch_that_cannot_be_started_is_failed_and_answered_503(
    store: tuple[Batches, Subjects],
) -> None:
    batches, subjects = store
    await batches.js.delete_stream(subjects.control_stream)  # StartBatch has nowhere to go
    file = await batches.files.upload(json.dumps(LINE).encode(), "in.jsonl", "batch")
    assert not isinstance(file, ErrorResponse)
    answer = await batches.create(
        BatchRequest(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    assert isinstance(answer, ErrorResponse) and answer.status == 503
    [key] = await batches.kv.keys()
    entry = await batches.kv.get(key)
    assert entry.value is not None
    stored = msgspec.json.decode(entry.value, type=Batch)
    assert stored.status == "failed" and stored.errors is not None
    assert stored.errors.data[0].code == "unavailable"


@pytest.mark.integration
async def test_cancel_moves_only_running_batches(store: tuple[Batches, Subjects]) -> None:
    batches, _ = store
    batch = await _create(batches)
    cancelled = await batches.cancel(batch.id)
    assert isinstance(cancelled, Batch) and cancelled.status == "cancelling"
    entry = await batches.kv.get(batch.id)
    assert entry.value is not None and entry.revision is not None
    ended = msgspec.structs.replace(cancelled, status="expired")
    await batches.kv.update(batch.id, msgspec.json.encode(ended), last=entry.revision)
    refused = await batches.cancel(batch.id)
    assert isinstance(refused, ErrorResponse) and refused.status == 409
    assert refused.error.type == "ConflictError"
