"""Nothing lost, nothing twice: a jobs worker killed mid-batch, and nats-server restarted
mid-batch, on a file-storage nats-server of the test's own."""

from __future__ import annotations

import asyncio
import collections
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraroute.natsserver import NatsServer
from tests.processes import Service, free_port
from tests.services.jobs.conftest import TEXTS, Harness, harness, job_config, request_line

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_LINES = 200


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server on a fixed port, so a restart on the same store keeps its address."""
    nats = NatsServer(store_dir=tmp_path / "nats", port=free_port())
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


async def _wait_results(h: Harness, batch_id: str, at_least: int) -> None:
    async with asyncio.timeout(60):
        while await h.results_done(batch_id) < at_least:
            await asyncio.sleep(0.05)


async def _exactly_once(h: Harness, batch_id: str, timeout_s: float) -> None:
    batch = await h.final(batch_id, timeout_s=timeout_s)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (_LINES, _LINES, 0)
    output = await h.file_lines(batch.output_file_id)
    assert collections.Counter(line["custom_id"] for line in output) == collections.Counter(
        f"k{i}" for i in range(_LINES)
    )
    assert await h.results_done(batch_id) == _LINES


async def test_a_killed_jobs_worker_is_replaced_and_the_batch_completes(
    server: NatsServer, tmp_path: Path, slow_mock: int
) -> None:
    config, path = job_config(tmp_path, slow_mock, concurrency=16, line_timeout_s=3.0)
    lines = [request_line(f"k{i}", TEXTS[i % len(TEXTS)]) for i in range(_LINES)]
    args = ["jobs", "--nats", server.url, "--config", str(path)]
    first = Service(args, tmp_path / "jobs-1.log")
    second = Service(args, tmp_path / "jobs-2.log")
    async with harness(server.url, config, jobs_worker=False) as h:
        try:
            first.start()
            batch_id = await h.submit(lines)
            await _wait_results(h, batch_id, 30)
            assert first.process is not None
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
            assert await h.results_done(batch_id) < _LINES, "the kill came too late"
            second.start()
            await _exactly_once(h, batch_id, timeout_s=90)
        finally:
            first.stop()
            assert second.stop() == 0, second.log_tail()  # SIGTERM drains and exits 0


async def test_the_batch_completes_across_a_nats_server_restart(
    server: NatsServer, tmp_path: Path, slow_mock: int
) -> None:
    config, _ = job_config(tmp_path, slow_mock, concurrency=16, line_timeout_s=5.0)
    lines = [request_line(f"k{i}", TEXTS[i % len(TEXTS)]) for i in range(_LINES)]
    async with harness(server.url, config) as h:
        batch_id = await h.submit(lines)
        await _wait_results(h, batch_id, 30)
        done = await h.results_done(batch_id)
        server.stop()
        assert done < _LINES, "the restart came too late"
        await asyncio.sleep(1.0)
        server.start()  # the same port and store directory
        await _exactly_once(h, batch_id, timeout_s=120)
