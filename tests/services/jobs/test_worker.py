"""The jobs worker against the session's nats-server, with the classifier, a dispatcher and a
mock vLLM running the lines: batches complete, fail line by line, cancel and expire."""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from prometheus_client import CollectorRegistry

from schemas.jobs import CancelBatch, DeadLetter, JobLine, result_decoder
from schemas.wire import ReplyAlive, ReplyResponse, encode_reply
from services.common.jetstream import JetStreamSetupError
from services.jobs.app import JobsWorker
from services.jobs.consumers import ensure_consumer, line_consumer
from services.jobs.store import now_s
from tests.services.jobs.conftest import (
    ADAPTERS,
    TEXTS,
    Harness,
    harness,
    job_config,
    request_line,
)

pytestmark = pytest.mark.integration


async def test_a_batch_completes_with_every_line_exactly_once(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, _ = job_config(jobs_folder, fast_mock)
    lines = [request_line(f"req-{i}", TEXTS[i % len(TEXTS)]) for i in range(300)]
    async with harness(nats_url, config) as h:
        batch_id = await h.submit(lines)
        batch = await h.final(batch_id)
        assert batch.status == "completed", batch
        assert batch.request_counts.total == 300 and batch.request_counts.completed == 300
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        assert batch.error_file_id is None
        output = await h.file_lines(batch.output_file_id)
        assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(300)]
        for line in output:
            assert line["response"]["status_code"] == 200 and line["error"] is None
            assert line["id"] == line["response"]["request_id"]
            assert line["id"].startswith("batch_req_")
        # Each body names the adapter its text was routed to.
        for index in (0, 1, 2):
            keyword = TEXTS[index].split()[0]
            assert output[index]["response"]["body"]["model"] == ADAPTERS[keyword]
        info = await h.resources.files.get_info(batch.output_file_id or "")
        assert info.description is not None
        described = msgspec.json.decode(info.description)
        assert described["purpose"] == "batch_output"
        assert described["filename"] == f"{batch_id}_output.jsonl"


async def test_malformed_lines_go_to_the_error_file_and_the_rest_completes(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, _ = job_config(jobs_folder, fast_mock)
    lines = [
        request_line("a", "blood"),
        b"this is not json",
        b'{"custom_id":"get","method":"GET","url":"/v1/chat/completions","body":{}}',
        request_line("streamed", "code").replace(b'"max_tokens"', b'"stream":true,"max_tokens"'),
        request_line("b", "law"),
    ]
    async with harness(nats_url, config) as h:
        batch = await h.final(await h.submit(lines))
        assert batch.status == "completed"
        counts = batch.request_counts
        assert (counts.total, counts.completed, counts.failed) == (5, 2, 3)
        output = await h.file_lines(batch.output_file_id)
        errors = await h.file_lines(batch.error_file_id)
        assert [line["custom_id"] for line in output] == ["a", "b"]
        assert [line["custom_id"] for line in errors] == ["line-2", "get", "streamed"]
        assert all(line["error"]["code"] == "invalid_request" for line in errors)
        assert "POST" in errors[1]["error"]["message"]


async def test_a_poison_payload_lands_in_the_dead_letter_stream(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, _ = job_config(jobs_folder, fast_mock)
    async with harness(nats_url, config, pipeline=False) as h:
        js = h.js
        await js.publish(h.subjects.job_lines("rawjob"), b"\x00 not a line")
        # The ids can be read, the rest cannot: a failed result is stored for it too.
        await js.publish(
            h.subjects.job_lines("rawjob"),
            b'{"type":"line","job_id":"rawjob","custom_id":"x","expires_at":"soon"}',
        )
        sub = await js.subscribe(h.subjects.job_dead_all, stream=h.subjects.dead_stream)
        dead = [
            msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=DeadLetter)
            for _ in range(2)
        ]
        await sub.unsubscribe()
        by_payload = {d.payload: d for d in dead}
        garbage = by_payload[b"\x00 not a line"]
        assert garbage.job_id is None and garbage.deliveries == 1 and garbage.error
        readable = next(d for d in dead if d.job_id == "rawjob")
        assert readable.custom_id == "x" and "unreadable" in readable.error
        result_sub = await js.subscribe(
            h.subjects.job_results("rawjob"), stream=h.subjects.results_stream
        )
        result = result_decoder.decode((await result_sub.next_msg(timeout=10)).data)
        await result_sub.unsubscribe()
        assert result.line.custom_id == "x" and not result.line.ok


async def test_a_line_failing_every_delivery_is_dead_lettered_with_a_failed_result(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    # No classifier runs: every delivery finds nobody on the job lane.
    config, _ = job_config(jobs_folder, fast_mock, max_deliver=2, backoff_s=[0.1])
    async with harness(nats_url, config, pipeline=False) as h:
        line = JobLine(job_id="rawjob", custom_id="lonely", body=msgspec.Raw(b'{"messages":[]}'))
        await h.js.publish(h.subjects.job_lines("rawjob"), msgspec.json.encode(line))
        sub = await h.js.subscribe(h.subjects.job_dead("rawjob"), stream=h.subjects.dead_stream)
        dead = msgspec.json.decode((await sub.next_msg(timeout=20)).data, type=DeadLetter)
        await sub.unsubscribe()
        assert dead.deliveries == 2 and dead.custom_id == "lonely"
        assert "no classifier" in dead.error
        assert msgspec.json.decode(dead.payload, type=JobLine) == line
        results = await h.js.subscribe(
            h.subjects.job_results("rawjob", ok=False), stream=h.subjects.results_stream
        )
        result = result_decoder.decode((await results.next_msg(timeout=10)).data)
        await results.unsubscribe()
        assert result.line.error is not None and result.line.error.code == "unavailable"


async def _cancel(h: Harness, batch_id: str) -> None:
    entry = await h.resources.batches.get(batch_id)
    batch = await h.batch(batch_id)
    cancelling = msgspec.structs.replace(batch, status="cancelling", cancelling_at=now_s())
    await h.resources.batches.update(batch_id, msgspec.json.encode(cancelling), last=entry.revision)
    await h.js.publish(
        h.subjects.jobs_control,
        msgspec.json.encode(CancelBatch(batch_id=batch_id)),
        headers={"Nats-Msg-Id": f"cancel:{batch_id}"},
    )


async def test_cancel_ends_cancelled_with_correct_counts(
    nats_url: str, jobs_folder: Path, slow_mock: int
) -> None:
    config, _ = job_config(jobs_folder, slow_mock, concurrency=4)
    lines = [request_line(f"c{i}", TEXTS[i % len(TEXTS)]) for i in range(60)]
    async with harness(nats_url, config) as h:
        batch_id = await h.submit(lines)
        while await h.results_done(batch_id) < 4:
            await asyncio.sleep(0.05)
        await _cancel(h, batch_id)
        batch = await h.final(batch_id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        counts = batch.request_counts
        assert counts.total == 60 and counts.completed + counts.failed == 60
        assert 4 <= counts.completed < 60
        output = await h.file_lines(batch.output_file_id)
        errors = await h.file_lines(batch.error_file_id)
        assert len(output) == counts.completed and len(errors) == counts.failed
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        ids = collections.Counter(line["custom_id"] for line in output + errors)
        assert ids == collections.Counter(f"c{i}" for i in range(60))
        # Nothing of the batch is left waiting in the lines stream.
        info = await h.js.stream_info(
            h.subjects.lines_stream, subjects_filter=h.subjects.job_lines(batch_id)
        )
        assert not info.state.subjects


async def test_a_batch_outliving_its_window_ends_expired_keeping_finished_lines(
    nats_url: str, jobs_folder: Path, slow_mock: int
) -> None:
    config, _ = job_config(jobs_folder, slow_mock, concurrency=2, completion_windows=["3s"])
    lines = [request_line(f"e{i}", TEXTS[i % len(TEXTS)]) for i in range(40)]
    async with harness(nats_url, config) as h:
        batch_id = await h.submit(lines, window_s=3)
        batch = await h.final(batch_id, timeout_s=30)
        assert batch.status == "expired" and batch.expired_at is not None
        counts = batch.request_counts
        assert counts.total == 40 and counts.completed + counts.failed == 40
        assert 1 <= counts.completed < 40
        output = await h.file_lines(batch.output_file_id)
        errors = await h.file_lines(batch.error_file_id)
        assert len(output) == counts.completed
        assert all(line["response"]["status_code"] == 200 for line in output)
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        ids = collections.Counter(line["custom_id"] for line in output + errors)
        assert ids == collections.Counter(f"e{i}" for i in range(40))


async def test_a_mismatched_consumer_is_an_error(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, _ = job_config(jobs_folder, fast_mock)
    async with harness(nats_url, config, pipeline=False, jobs_worker=False) as h:
        await h.js.add_consumer(
            h.subjects.lines_stream,
            ConsumerConfig(
                durable_name=h.subjects.line_consumer,
                filter_subject=h.subjects.job_lines_all,
                max_deliver=99,
            ),
        )
        worker = JobsWorker(config, nats_url)
        with pytest.raises(JetStreamSetupError, match="max_deliver"):
            await worker.start()
        assert worker.nc is None


async def test_a_stopped_worker_hands_its_lines_back_at_once(
    nats_url: str, jobs_folder: Path, slow_mock: int
) -> None:
    # An ack wait of a minute: only the lines handed back by the drain can finish in time.
    config, _ = job_config(jobs_folder, slow_mock, concurrency=8, line_timeout_s=30.0)
    lines = [request_line(f"d{i}", TEXTS[i % len(TEXTS)]) for i in range(40)]
    async with harness(nats_url, config) as h:
        first = h.workers[-1]
        batch_id = await h.submit(lines)
        while await h.results_done(batch_id) < 8:
            await asyncio.sleep(0.05)
        await first.stop(0.05)  # too short for the lines in flight: they are nak'ed
        assert await h.results_done(batch_id) < 40
        second = JobsWorker(config, nats_url)
        h.workers.append(second)
        await second.start()
        batch = await h.final(batch_id, timeout_s=20)
        assert batch.status == "completed" and batch.request_counts.completed == 40
        output = await h.file_lines(batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"d{i}" for i in range(40))


async def test_a_line_whose_every_delivery_dies_is_dead_lettered(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, _ = job_config(jobs_folder, fast_mock, max_deliver=2, line_timeout_s=1.0)
    async with harness(nats_url, config, pipeline=False, jobs_worker=False) as h:
        js = h.js
        await ensure_consumer(js, h.subjects.lines_stream, line_consumer(h.subjects, config.jobs))
        line = JobLine(job_id="rawjob", custom_id="doomed", body=msgspec.Raw(b'{"messages":[]}'))
        await js.publish(h.subjects.job_lines("rawjob"), msgspec.json.encode(line))
        # Two deliveries whose "worker" never settles them (as if it died each time).
        dying = await js.pull_subscribe_bind(
            durable=h.subjects.line_consumer, stream=h.subjects.lines_stream
        )
        for delivery in (1, 2):
            (msg,) = await dying.fetch(1, timeout=10)
            assert msg.metadata.num_delivered == delivery
        await dying.unsubscribe()
        dead_sub = await js.subscribe(h.subjects.job_dead("rawjob"), stream=h.subjects.dead_stream)
        worker = JobsWorker(config, nats_url)
        h.workers.append(worker)
        await worker.start()
        dead = msgspec.json.decode((await dead_sub.next_msg(timeout=20)).data, type=DeadLetter)
        await dead_sub.unsubscribe()
        assert dead.custom_id == "doomed" and dead.deliveries == 2 and "died" in dead.error
        async with asyncio.timeout(10):  # then it is removed from the lines stream
            while (
                await js.stream_info(
                    h.subjects.lines_stream, subjects_filter=h.subjects.job_lines("rawjob")
                )
            ).state.subjects:
                await asyncio.sleep(0.05)
        results = await js.subscribe(
            h.subjects.job_results("rawjob", ok=False), stream=h.subjects.results_stream
        )
        stored = [result_decoder.decode((await results.next_msg(timeout=10)).data)]
        await results.unsubscribe()
        assert any(r.line.custom_id == "doomed" for r in stored)


def test_the_command_refuses_a_mismatched_consumer_with_status_2(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    config, path = job_config(jobs_folder, fast_mock)

    async def create() -> None:
        async with harness(nats_url, config, pipeline=False, jobs_worker=False) as h:
            await h.js.add_consumer(
                h.subjects.control_stream,
                ConsumerConfig(
                    durable_name=h.subjects.control_consumer,
                    filter_subject=h.subjects.jobs_control,
                    max_deliver=99,
                ),
            )

    asyncio.run(create())
    done = subprocess.run(
        [sys.executable, "-m", "loraroute", "jobs", "--nats", nats_url, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "job-control" in done.stderr and "max_deliver" in done.stderr


async def test_stop_hands_back_a_line_waiting_for_the_pipeline_at_once(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    # No classifier runs: the line waits for the pipeline (line_timeout_s is long); stopping
    # the worker must not wait for it but give the line back, without using up a delivery.
    config, _ = job_config(jobs_folder, fast_mock, line_timeout_s=120.0, max_deliver=2)
    async with harness(nats_url, config, pipeline=False, jobs_worker=False) as h:
        registry = CollectorRegistry()
        worker = JobsWorker(config, nats_url, registry=registry)
        await worker.start()
        line = JobLine(job_id="rawjob", custom_id="waits", body=msgspec.Raw(b'{"messages":[]}'))
        await h.js.publish(h.subjects.job_lines("rawjob"), msgspec.json.encode(line))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while registry.get_sample_value("loraroute_jobs_lines_in_flight") != 1:
            assert loop.time() < deadline, "the line never started"
            await asyncio.sleep(0.05)
        started = loop.time()
        await worker.stop(30)
        assert loop.time() - started < 5
        # Handed back (nak'ed for redelivery), neither dead-lettered nor answered.
        info = await h.js.consumer_info(h.subjects.lines_stream, h.subjects.line_consumer)
        assert info.num_ack_pending == 1 and info.num_pending == 0
        assert (await h.js.stream_info(h.subjects.dead_stream)).state.messages == 0
        assert (await h.js.stream_info(h.subjects.results_stream)).state.messages == 0


async def test_a_line_lost_in_the_pipeline_is_run_again_long_before_its_timeout(
    nats_url: str, jobs_folder: Path, fast_mock: int
) -> None:
    # The job lane's "classifier" takes the line, says a dispatcher has it, and goes silent (the
    # dispatcher died while vLLM ran): the worker must give the run up after `liveness.stall_s`,
    # not `line_timeout_s`, and run the line again; the second run is answered.
    config, _ = job_config(jobs_folder, fast_mock, line_timeout_s=60.0, max_deliver=3)
    config = msgspec.structs.replace(
        config, liveness=msgspec.structs.replace(config.liveness, heartbeat_s=0.1, stall_s=0.5)
    )
    async with harness(nats_url, config, pipeline=False, jobs_worker=False) as h:
        attempts: list[float] = []

        async def lane(msg: Msg) -> None:
            attempts.append(asyncio.get_running_loop().time())
            if len(attempts) == 1:
                await h.nc.publish(msg.reply, encode_reply(ReplyAlive(held_by="dispatcher")))
                return
            answer = ReplyResponse(status=200, body=msgspec.Raw(b'{"id":"x","choices":[]}'))
            await h.nc.publish(msg.reply, encode_reply(answer))

        await h.nc.subscribe(h.subjects.classify_jobs, queue="classifiers", cb=lane)
        await h.nc.flush()
        registry = CollectorRegistry()
        worker = JobsWorker(config, nats_url, registry=registry)
        await worker.start()
        try:
            line = JobLine(job_id="lostjob", custom_id="l1", body=msgspec.Raw(b'{"messages":[]}'))
            await h.js.publish(h.subjects.job_lines("lostjob"), msgspec.json.encode(line))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while (await h.js.stream_info(h.subjects.results_stream)).state.messages < 1:
                assert loop.time() < deadline, "the line never finished"
                await asyncio.sleep(0.05)
        finally:
            await worker.stop(5)
        assert len(attempts) == 2
        assert registry.get_sample_value("loraroute_jobs_lines_total", {"outcome": "lost"}) == 1
        # Lost after a dispatcher had it: a delivery was used (a line that kills its
        # dispatcher is dead-lettered after max_deliver, never run forever).
        assert registry.get_sample_value("loraroute_jobs_lines_total", {"outcome": "retried"}) == 1
        stored = await h.js.get_last_msg(
            h.subjects.results_stream, h.subjects.job_results("lostjob")
        )
        response = result_decoder.decode(stored.data).line.response
        assert response is not None and response.status_code == 200
