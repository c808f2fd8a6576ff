"""The jobs worker's integration harness: a mock vLLM, the classifier (keyword engine) and
dispatcher in process, and helpers that submit a batch the way the ingress does (the input file
in the Object Store, the batch in KV, `StartBatch` on the control stream) and wait for its end."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import ObjectMeta

from schemas.config import Config, load_config
from schemas.jobs import Batch, FileObject, StartBatch
from services.classifier.app import ClassifierWorker
from services.classifier.engine import Engine
from services.classifier.labels import LabelMap
from services.common import bus
from services.common.jetstream import JobResources, ensure_job_resources
from services.common.subjects import Subjects
from services.dispatcher.app import DispatcherWorker
from services.jobs.app import JobsWorker
from services.jobs.store import FINAL
from tests.processes import Service, free_port, write_config
from tests.services.classifier.fakes import LABELS, KeywordBackend, keyword_tokenizer

TEXTS = ("blood test results", "code review", "law school", "hello there")
ADAPTERS = {"blood": "medical-lora", "code": "technical-lora", "law": "legal-lora"}


def request_line(custom_id: str, text: str) -> bytes:
    """One input file line in OpenAI's batch form."""
    body = {"model": "MoM", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return msgspec.json.encode(line)


def start_mock(folder: Path, *extra: str) -> Service:
    """A mock vLLM serving the shipped config's base model and adapters."""
    port = free_port()
    return Service(
        [
            "mock-vllm",
            "--port",
            str(port),
            "--model",
            "llama2-7b",
            "--lora-modules",
            *(f"{a}={a}" for a in ("technical-lora", "medical-lora", "legal-lora")),
            "--output-tokens",
            "1:2",
            *extra,
        ],
        folder / f"mock-{port}.log",
        health_url=f"http://127.0.0.1:{port}/health",
    ).start()


def mock_port(service: Service) -> int:
    assert service.health_url is not None
    return int(service.health_url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def jobs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def fast_mock(jobs_folder: Path) -> Iterator[int]:
    """A mock vLLM answering at once; yields its port."""
    service = start_mock(jobs_folder)
    try:
        yield mock_port(service)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def slow_mock(jobs_folder: Path) -> Iterator[int]:
    """A mock vLLM taking 400 ms per answer; yields its port."""
    service = start_mock(jobs_folder, "--ttft-ms", "400")
    try:
        yield mock_port(service)
    finally:
        service.stop()


def job_config(folder: Path, vllm_port: int, **jobs: Any) -> tuple[Config, Path]:
    """The shipped config with a fresh subject prefix, the mock's port and `jobs` settings."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = {"line_timeout_s": 10.0, "backoff_s": [0.2], "concurrency": 16, **jobs}
    path = write_config(
        folder / f"config-{prefix}.yaml",
        {
            "nats": {"subject_prefix": prefix},
            "vllm_endpoints": [{"name": "vllm-primary", "address": "127.0.0.1", "port": vllm_port}],
            "jobs": settings,
        },
    )
    config, _ = load_config(path)
    return config, path


@dataclass
class Harness:
    """A test's view of the job resources, playing the ingress."""

    nc: Client
    subjects: Subjects
    resources: JobResources
    workers: list[Any] = field(default_factory=list)

    @property
    def js(self) -> Any:
        return self.nc.jetstream()

    async def submit(self, lines: Sequence[bytes], window_s: int = 3600) -> str:
        """Store the input file and the batch, publish `StartBatch`; return the batch id."""
        file_id, batch_id = f"file-{uuid.uuid4().hex}", f"batch_{uuid.uuid4().hex}"
        data = b"\n".join(lines) + b"\n"
        now = int(time.time())
        file = FileObject(
            id=file_id, bytes=len(data), created_at=now, filename="in.jsonl", purpose="batch"
        )
        meta = ObjectMeta(name=file_id, description=msgspec.json.encode(file).decode())
        await self.resources.files.put(file_id, data, meta=meta)
        batch = Batch(
            id=batch_id,
            input_file_id=file_id,
            completion_window=f"{window_s}s",
            created_at=now,
            expires_at=now + window_s,
        )
        await self.resources.batches.create(batch_id, msgspec.json.encode(batch))
        await self.js.publish(
            self.subjects.jobs_control,
            msgspec.json.encode(StartBatch(batch_id=batch_id)),
            headers={"Nats-Msg-Id": f"start:{batch_id}"},
        )
        return batch_id

    async def batch(self, batch_id: str) -> Batch:
        entry = await self.resources.batches.get(batch_id)
        assert entry.value is not None
        return msgspec.json.decode(entry.value, type=Batch)

    async def wait(self, batch_id: str, statuses: frozenset[str], timeout_s: float) -> Batch:
        deadline = time.monotonic() + timeout_s
        batch: Batch | None = None
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # NATS restarting
                batch = await self.batch(batch_id)
                if batch.status in statuses:
                    return batch
            assert time.monotonic() < deadline, f"batch not final in time: {batch}"
            await asyncio.sleep(0.1)

    async def final(self, batch_id: str, timeout_s: float = 60.0) -> Batch:
        return await self.wait(batch_id, FINAL, timeout_s)  # type: ignore[arg-type]

    async def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        data = (await self.resources.files.get(file_id)).data or b""
        return [msgspec.json.decode(line) for line in data.splitlines()]

    async def results_done(self, batch_id: str) -> int:
        info = await self.js.stream_info(
            self.subjects.results_stream, subjects_filter=self.subjects.job_results(batch_id)
        )
        return sum((info.state.subjects or {}).values())


def keyword_engine(config: Config) -> Engine:
    return Engine(
        keyword_tokenizer(),
        KeywordBackend(),
        LabelMap.build(LABELS, {c.name: None for c in config.categories}),
    )


@contextlib.asynccontextmanager
async def harness(
    nats_url: str, config: Config, *, pipeline: bool = True, jobs_worker: bool = True
) -> AsyncIterator[Harness]:
    """Classifier and dispatcher (`pipeline`) and a jobs worker in process, plus a client."""
    nc = await bus.connect(nats_url, name="jobs-test")
    subjects = Subjects(config.nats.subject_prefix)
    h = Harness(nc, subjects, await ensure_job_resources(nc.jetstream(), subjects, config.jobs))
    try:
        if pipeline:
            h.workers.append(ClassifierWorker(config, keyword_engine(config), nats_url))
            h.workers.append(DispatcherWorker(config, nats_url))
        if jobs_worker:
            h.workers.append(JobsWorker(config, nats_url))
        for worker in h.workers:
            await worker.start()
        yield h
    finally:
        for worker in reversed(h.workers):
            await worker.stop(5)
        await bus.close(nc)
