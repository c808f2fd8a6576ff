"""The Batch API of a real ingress process over a real nats-server, driven by the official
`openai` client; the test plays the jobs worker's part (`tests.jobs_double`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from schemas.config import Jobs
from schemas.jobs import CancelBatch, StartBatch
from services.common.filestore import put_file
from tests.jobs_double import JobsDouble, batch_ingress, batch_input

pytestmark = [pytest.mark.integration]

MAX_FILE_BYTES = 8192
JOBS = {"max_file_bytes": MAX_FILE_BYTES, "max_lines": 50, "completion_windows": ["24h", "2h"]}


@dataclass(frozen=True)
class Ingress:
    url: str
    prefix: str
    log: Path


@pytest.fixture(scope="module")
def ingress(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    folder = tmp_path_factory.mktemp("batch-ingress")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    service = batch_ingress(nats_url, folder, prefix, JOBS).start()
    assert service.health_url is not None
    try:
        yield Ingress(service.health_url.removesuffix("/health"), prefix, service.log_path)
    finally:
        service.stop()


@pytest.fixture
async def client(ingress: Ingress) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{ingress.url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def worker(ingress: Ingress, nats_url: str) -> AsyncIterator[JobsDouble]:
    double = await JobsDouble.connect(nats_url, ingress.prefix, Jobs(**JOBS))  # type: ignore[arg-type]
    try:
        yield double
    finally:
        await double.close()


async def upload(client: openai.AsyncOpenAI, data: bytes) -> str:
    file = await client.files.create(file=("input.jsonl", data), purpose="batch")
    return file.id


# --------------------------------------------------------------------------- files


async def test_a_file_is_uploaded_read_downloaded_and_deleted(client: openai.AsyncOpenAI) -> None:
    data = batch_input("a", "b")
    file = await client.files.create(file=("mine.jsonl", data), purpose="batch")
    assert file.id.startswith("file-") and len(file.id) == 37
    assert (file.object, file.purpose, file.filename, file.bytes) == (
        "file",
        "batch",
        "mine.jsonl",
        len(data),
    )
    assert file.expires_at == file.created_at + 7 * 24 * 3600  # jobs.retention_s
    assert await client.files.retrieve(file.id) == file
    assert (await client.files.content(file.id)).content == data
    deleted = await client.files.delete(file.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (file.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.content(file.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.delete(file.id)


@pytest.mark.parametrize(
    ("data", "purpose", "says"),
    [
        (b"hello\nworld\n", "batch", "not JSONL"),
        (batch_input("a") + batch_input("b", url="/v1/embeddings"), "batch", "several endpoints"),
        (batch_input("a", url="/v1/completions"), "batch", "/v1/chat/completions"),
        (batch_input("a", "a"), "batch", "custom_id 'a'"),
        (b"\n\n", "batch", "no lines"),
        (batch_input(*map(str, range(51))), "batch", "more than the limit 50"),
        (batch_input("a"), "fine-tune", "only 'batch'"),
    ],
    ids=["not-jsonl", "mixed", "endpoint", "duplicate", "empty", "lines", "purpose"],
)
async def test_an_upload_that_is_no_batch_input_is_refused(
    client: openai.AsyncOpenAI, data: bytes, purpose: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.files.create(file=("x.jsonl", data), purpose=purpose)  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    assert says in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "BadRequestError"


async def test_a_file_over_the_limit_is_refused_with_413(
    client: openai.AsyncOpenAI, ingress: Ingress
) -> None:
    data = batch_input(*(f"line-{i:04d}-{'x' * 100}" for i in range(40)))
    assert len(data) > MAX_FILE_BYTES
    with pytest.raises(openai.APIStatusError) as raised:
        await client.files.create(file=("big.jsonl", data), purpose="batch")
    assert raised.value.status_code == 413
    assert "the limit is 8192 bytes" in raised.value.message
    # Declared far beyond the limit: refused before the body is read.
    huge = httpx.post(
        f"{ingress.url}/v1/files",
        headers={"content-type": "multipart/form-data; boundary=x"},
        content=b"x" * (MAX_FILE_BYTES + 70 * 1024),
    )
    assert huge.status_code == 413


async def test_an_upload_that_is_not_a_multipart_form_is_refused(ingress: Ingress) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{ingress.url}/v1/files", json={"purpose": "batch"})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "file"
        missing = await http.post(f"{ingress.url}/v1/files", data={"purpose": "batch"}, files={})
        assert missing.status_code == 400


# --------------------------------------------------------------------------- batches


async def test_a_batch_runs_from_upload_to_output_file(
    client: openai.AsyncOpenAI, worker: JobsDouble
) -> None:
    file_id = await upload(client, batch_input("q1", "q2", "q3"))
    batch = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "eval"},
    )
    assert batch.id.startswith("batch_") and len(batch.id) == 38
    assert (batch.status, batch.input_file_id, batch.metadata) == (
        "validating",
        file_id,
        {"team": "eval"},
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert await worker.next_control(batch.id) == StartBatch(batch_id=batch.id)

    lines = await worker.start(batch.id)
    await worker.answer(batch.id, lines[0])
    await worker.answer(batch.id, lines[0])  # a redelivered line counts once
    await worker.answer(batch.id, lines[2], ok=False)
    running = await client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.in_progress_at is not None
    assert running.request_counts is not None
    assert (running.request_counts.total, running.request_counts.completed) == (3, 1)
    assert running.request_counts.failed == 1

    await worker.answer(batch.id, lines[1])
    await worker.finalize(batch.id)
    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at is not None
    assert done.request_counts is not None and done.request_counts.completed == 2
    assert done.output_file_id is not None and done.error_file_id is not None
    output = (await client.files.content(done.output_file_id)).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["q1", "q2"]
    assert json.loads(output[0])["response"]["body"]["model"] == "medical-lora"
    errors = (await client.files.content(done.error_file_id)).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in errors] == ["q3"]
    output_file = await client.files.retrieve(done.output_file_id)
    assert (output_file.purpose, output_file.filename) == (
        "batch_output",
        f"{batch.id}_output.jsonl",
    )


async def test_a_batch_is_refused_for_a_wrong_endpoint_window_file_or_metadata(
    client: openai.AsyncOpenAI, worker: JobsDouble
) -> None:
    file_id = await upload(client, batch_input("a"))
    good = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    wrong = [
        ({"endpoint": "/v1/embeddings"}, openai.BadRequestError, "endpoint"),
        ({"completion_window": "48h"}, openai.BadRequestError, "completion_window"),
        ({"input_file_id": f"file-{uuid.uuid4().hex}"}, openai.NotFoundError, "input_file_id"),
        ({"input_file_id": "nonsense"}, openai.NotFoundError, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, openai.BadRequestError, "metadata"),
        ({"metadata": {"k": "v" * 513}}, openai.BadRequestError, "metadata"),
    ]
    for change, error, param in wrong:
        with pytest.raises(error) as raised:
            await client.batches.create(**{**good, **change})  # type: ignore[arg-type]
        assert isinstance(raised.value.body, dict) and raised.value.body["param"] == param, change
    output = await put_file(
        worker.resources.files, batch_input("a"), filename="out.jsonl", purpose="batch_output"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(**{**good, "input_file_id": output.id})  # type: ignore[arg-type]
    assert "purpose 'batch_output'" in refused.value.message
    # A shorter configured window is accepted and sets expires_at.
    short = await client.batches.create(**{**good, "completion_window": "2h"})  # type: ignore[arg-type]
    assert short.expires_at == short.created_at + 2 * 3600


async def test_a_file_refused_at_creation_creates_no_batch(
    client: openai.AsyncOpenAI, worker: JobsDouble, ingress: Ingress
) -> None:
    # Stored behind the upload's back (as a file uploaded under looser limits would be).
    stored = await put_file(
        worker.resources.files, b"not json at all\n", filename="x.jsonl", purpose="batch"
    )
    before = [b.id async for b in client.batches.list(limit=100)]
    with pytest.raises(openai.BadRequestError) as raised:
        await client.batches.create(
            input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "not JSONL" in raised.value.message
    assert [b.id async for b in client.batches.list(limit=100)] == before


async def test_batches_are_listed_newest_first_page_by_page(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, batch_input("a"))
    created = [
        (
            await client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        ).id
        for _ in range(5)
    ]
    first = await client.batches.list(limit=2)
    assert [b.id for b in first.data] == created[::-1][:2]
    assert first.has_more is True
    second = await first.get_next_page()
    assert [b.id for b in second.data] == created[::-1][2:4]
    everything = [b.id async for b in client.batches.list(limit=2)]
    assert everything == sorted(everything, reverse=True)
    assert everything[:5] == created[::-1]
    last = await client.batches.list(after=everything[-2], limit=5)
    assert [b.id for b in last.data] == everything[-1:] and last.has_more is False
    for bad in ("0", "101", "x"):
        with pytest.raises(openai.BadRequestError):
            await client.batches.list(limit=bad)  # type: ignore[arg-type]


async def test_a_batch_is_cancelled_once_and_an_ended_batch_not_at_all(
    client: openai.AsyncOpenAI, worker: JobsDouble
) -> None:
    file_id = await upload(client, batch_input("a", "b"))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert await worker.next_control(batch.id) == StartBatch(batch_id=batch.id)
    lines = await worker.start(batch.id)
    await worker.answer(batch.id, lines[0])
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelling.request_counts is not None and cancelling.request_counts.completed == 1
    again = await client.batches.cancel(batch.id)  # harmless, and published only once
    assert (again.status, again.cancelling_at) == ("cancelling", cancelling.cancelling_at)
    assert await worker.next_control(batch.id) == CancelBatch(batch_id=batch.id)
    with pytest.raises(TimeoutError):
        await worker.next_control(batch.id, timeout_s=0.5)
    await worker.finalize(batch.id, "cancelled")
    with pytest.raises(openai.ConflictError) as raised:
        await client.batches.cancel(batch.id)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"] == "Cannot cancel a batch with status 'cancelled'."
    assert (await client.batches.retrieve(batch.id)).status == "cancelled"


async def test_unknown_ids_are_404(client: openai.AsyncOpenAI) -> None:
    for batch_id in (f"batch_{uuid.uuid4().hex}", "batch_nope", "x.y"):
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve(batch_id)
        with pytest.raises(openai.NotFoundError):
            await client.batches.cancel(batch_id)
    for file_id in (f"file-{uuid.uuid4().hex}", "file-nope"):
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(file_id)


async def test_the_ingress_does_not_start_on_a_mismatched_job_stream(
    nats_url: str, ingress: Ingress, tmp_path: Path
) -> None:
    other = batch_ingress(nats_url, tmp_path, ingress.prefix, {**JOBS, "retention_s": 60.0})
    with pytest.raises(RuntimeError, match="max_age"):
        other.start(timeout_s=20.0)
    other.stop()
