"""A stand-in for the jobs worker in tests of the Batch API: it does over real JetStream what
the worker does (take `StartBatch`/`CancelBatch` from the control stream, move batches by
compare-and-set in KV, publish `JobResult`s, write output and error files), each step called
by the test, so the ingress and the CLI can be tested without the worker's scheduling.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.api import Header
from nats.js.errors import KeyWrongLastSequenceError

from schemas.config import Jobs
from schemas.jobs import (
    Batch,
    BatchControl,
    BatchLineError,
    BatchOutputLine,
    BatchResponse,
    InputLine,
    JobResult,
    StartBatch,
    control_decoder,
    read_input,
)
from services.common import bus
from services.common.filestore import file_bytes, put_file
from services.common.jetstream import JobResources, ensure_job_resources
from services.common.subjects import Subjects
from tests.processes import Service, free_port, write_config

__all__ = ["JobsDouble", "batch_ingress", "batch_input"]

_batch_decoder = msgspec.json.Decoder(Batch)


def batch_input(*custom_ids: str, url: str = "/v1/chat/completions") -> bytes:
    """A batch input file with one chat request (`model: MoM`) per custom id."""
    return b"".join(
        json.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": url,
                "body": {"model": "MoM", "messages": [{"role": "user", "content": cid}]},
            }
        ).encode()
        + b"\n"
        for cid in custom_ids
    )


def batch_ingress(nats_url: str, folder: Path, prefix: str, jobs: dict[str, Any]) -> Service:
    """An ingress (not started) on a free port with subject prefix `prefix` and `jobs` merged
    into the shipped config's `jobs:` section; its base URL is `health_url` less `/health`."""
    port = free_port()
    config = write_config(
        folder / "config.yaml",
        {"nats": {"subject_prefix": prefix}, "ingress": {"port": port}, "jobs": jobs},
    )
    return Service(
        ["ingress", "--nats", nats_url, "--config", str(config), "--graceful-timeout", "2"],
        folder / "ingress.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )


class JobsDouble:
    """The jobs worker's side of the contract, step by step."""

    def __init__(self, nc: Client, subjects: Subjects, resources: JobResources) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.resources = resources
        #: Per batch: custom id -> its result (a repeated one is dropped, as the stream does).
        self.results: dict[str, dict[str, BatchOutputLine]] = {}

    @classmethod
    async def connect(cls, nats_url: str, prefix: str, jobs: Jobs) -> JobsDouble:
        nc = await bus.connect(nats_url, name="test-jobs-double")
        subjects = Subjects(prefix)
        return cls(nc, subjects, await ensure_job_resources(nc.jetstream(), subjects, jobs))

    async def close(self) -> None:
        await bus.close(self.nc)

    async def next_control(self, batch_id: str | None, timeout_s: float = 5.0) -> BatchControl:
        """The next control message about `batch_id` (None: the next `StartBatch`), acked as
        the worker's durable consumer takes it; others, left by earlier tests, are skipped."""
        sub = await self.js.pull_subscribe(
            self.subjects.jobs_control,
            durable=self.subjects.control_consumer,
            stream=self.subjects.control_stream,
        )
        try:
            while True:
                [msg] = await sub.fetch(1, timeout=timeout_s)
                await msg.ack()
                message = control_decoder.decode(msg.data)
                if message.batch_id == batch_id or (
                    batch_id is None and isinstance(message, StartBatch)
                ):
                    return message
        finally:
            await sub.unsubscribe()

    async def batch(self, batch_id: str) -> Batch:
        entry = await self.resources.batches.get(batch_id)
        assert entry.value is not None
        return _batch_decoder.decode(entry.value)

    async def update(self, batch_id: str, change: Callable[[Batch], Batch]) -> Batch:
        """Compare-and-set the batch, retrying while another writer wins."""
        while True:
            entry = await self.resources.batches.get(batch_id)
            assert entry.value is not None and entry.revision is not None
            batch = change(_batch_decoder.decode(entry.value))
            try:
                await self.resources.batches.update(
                    batch_id, msgspec.json.encode(batch), last=entry.revision
                )
            except KeyWrongLastSequenceError:
                continue
            return batch

    async def start(self, batch_id: str) -> list[InputLine]:
        """Read the batch's input file and move it to `in_progress` with its total."""
        batch = await self.batch(batch_id)
        data = await file_bytes(self.resources.files, batch.input_file_id)
        assert data is not None
        lines = read_input(data, max_line_bytes=1 << 20, max_lines=1 << 20).lines
        now = int(time.time())
        await self.update(
            batch_id,
            lambda b: msgspec.structs.replace(
                b,
                status="in_progress",
                in_progress_at=now,
                request_counts=msgspec.structs.replace(b.request_counts, total=len(lines)),
            ),
        )
        return lines

    async def answer(self, batch_id: str, line: InputLine, *, ok: bool = True) -> None:
        """Store one line's result in the results stream, as the worker does after a call."""
        custom_id = line.custom_id or str(line.number)
        output = BatchOutputLine(
            id=f"batch_req_{uuid.uuid4().hex}",
            custom_id=line.custom_id,
            response=BatchResponse(
                status_code=200,
                request_id=f"req-{custom_id}",
                body=msgspec.Raw(
                    msgspec.json.encode({"model": "medical-lora", "custom_id": custom_id})
                ),
            )
            if ok
            else None,
            error=None if ok else BatchLineError(code="invalid_request", message="bad line"),
        )
        await self.js.publish(
            self.subjects.job_results(batch_id, ok),
            msgspec.json.encode(JobResult(job_id=batch_id, line=output)),
            headers={Header.MSG_ID.value: f"{batch_id}:{custom_id}"},
        )
        self.results.setdefault(batch_id, {}).setdefault(custom_id, output)

    async def finalize(self, batch_id: str, status: str = "completed") -> Batch:
        """Write the output and error files and set the final `status`."""
        lines = list(self.results.get(batch_id, {}).values())
        ids: dict[bool, str | None] = {}
        for ok, suffix in ((True, "output"), (False, "error")):
            chosen = [line for line in lines if line.ok == ok]
            if not chosen:
                ids[ok] = None
                continue
            data = b"".join(msgspec.json.encode(line) + b"\n" for line in chosen)
            file = await put_file(
                self.resources.files,
                data,
                filename=f"{batch_id}_{suffix}.jsonl",
                purpose="batch_output",
            )
            ids[ok] = file.id
        now = int(time.time())
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}
        return await self.update(
            batch_id,
            lambda b: msgspec.structs.replace(
                b,
                status=status,
                finalizing_at=now,
                output_file_id=ids[True],
                error_file_id=ids[False],
                **{stamp[status]: now},
            ),
        )
