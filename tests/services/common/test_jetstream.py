"""`services.common.jetstream` against a real nats-server with JetStream on file storage."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType

from schemas.config import Jobs
from schemas.jobs import RequestCounts
from services.common.jetstream import (
    JetStreamSetupError,
    bucket_keys,
    ensure_job_resources,
    ensure_stream,
    job_streams,
    result_counts,
)
from services.common.subjects import Subjects

pytestmark = pytest.mark.integration


def _subjects() -> Subjects:
    return Subjects(f"t{uuid.uuid4().hex[:8]}")


async def test_creates_every_stream_and_bucket_once(client: Client) -> None:
    js = client.jetstream()
    subjects, jobs = _subjects(), Jobs(retention_s=3600.0)
    first = await ensure_job_resources(js, subjects, jobs)
    second = await ensure_job_resources(js, subjects, jobs)  # idempotent
    for name in (
        subjects.lines_stream,
        subjects.results_stream,
        subjects.dead_stream,
        subjects.control_stream,
    ):
        info = await js.stream_info(name)
        assert info.config.storage == StorageType.FILE
        assert info.config.max_age == pytest.approx(3600.0)
    lines = await js.stream_info(subjects.lines_stream)
    assert lines.config.retention == RetentionPolicy.WORK_QUEUE
    assert lines.config.subjects == [subjects.job_lines_all]
    await first.batches.put("b1", b"x")
    assert (await second.batches.get("b1")).value == b"x"
    await first.files.put("f1", b"content")
    assert (await second.files.get("f1")).data == b"content"


async def test_a_mismatched_stream_is_an_error_not_a_change(client: Client) -> None:
    js = client.jetstream()
    subjects = _subjects()
    await ensure_job_resources(js, subjects, Jobs(retention_s=3600.0))
    with pytest.raises(JetStreamSetupError) as raised:
        await ensure_job_resources(js, subjects, Jobs(retention_s=7200.0))
    message = str(raised.value)
    assert subjects.lines_stream in message and "max_age" in message
    info = await js.stream_info(subjects.lines_stream)
    assert info.config.max_age == pytest.approx(3600.0)  # unchanged


async def test_more_replicas_than_servers_is_an_error(client: Client) -> None:
    js = client.jetstream()
    config = job_streams(_subjects(), Jobs(replicas=3))[0]
    with pytest.raises(JetStreamSetupError, match="cannot create"):
        await ensure_stream(js, config)


async def test_result_counts_count_each_line_once(client: Client) -> None:
    js = client.jetstream()
    subjects = _subjects()
    await ensure_job_resources(js, subjects, Jobs(retention_s=3600.0))
    assert await result_counts(js, subjects, "b1") == RequestCounts()
    for custom_id, ok in [("a", True), ("b", False), ("a", True), ("c", True)]:
        await js.publish(
            subjects.job_results("b1", ok), b"{}", headers={"Nats-Msg-Id": f"b1:{custom_id}"}
        )
    await js.publish(subjects.job_results("b2", True), b"{}")
    assert await result_counts(js, subjects, "b1") == RequestCounts(completed=2, failed=1)


async def test_bucket_keys_lists_every_key_and_leaves_no_consumer(client: Client) -> None:
    js = client.jetstream()
    subjects = _subjects()
    resources = await ensure_job_resources(js, subjects, Jobs(retention_s=3600.0))
    stream = f"KV_{subjects.batches_bucket}"
    assert await bucket_keys(js, subjects.batches_bucket) == []
    for key in ("batch_b", "batch_a", "batch_c"):
        await resources.batches.put(key, b"{}")
    await resources.batches.put("batch_a", b'{"again": true}')  # one key, two revisions
    for _ in range(5):  # as a worker's sweep does, round after round
        assert sorted(await bucket_keys(js, subjects.batches_bucket)) == [
            "batch_a",
            "batch_b",
            "batch_c",
        ]
    assert (await js.stream_info(stream)).state.consumer_count == 0
    # What it replaces: each `keys()` leaves an ordered consumer on the server for minutes.
    await resources.batches.keys()
    assert (await js.stream_info(stream)).state.consumer_count == 1
