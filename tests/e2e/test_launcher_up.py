"""`loraroute up` starts the whole system, answers, and stops every child cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import openai
import pytest

from schemas.config import load_config
from services.common.subjects import Subjects
from tests.processes import REPO, free_port, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; children of `up` are its to reap.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    port, mock_port = free_port(), free_port()
    config = write_config(
        tmp_path / "config.yaml",
        {
            "ingress": {"port": port},
            "vllm_endpoints": [{"name": "vllm-primary", "address": "127.0.0.1", "port": mock_port}],
        },
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "loraroute", "up", "--config", str(config),
             "--data-dir", str(tmp_path / "var"), "--mock-echo", *extra],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while "loraroute is up" not in log_path.read_text(errors="replace"):
        if up.poll() is not None or time.monotonic() > deadline:
            if up.poll() is None:
                up.kill()
                up.wait(10)
            raise AssertionError(log_path.read_text())
        time.sleep(0.2)
    return up, log_path, port


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    up, log_path, port = _start_up(tmp_path)
    try:
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}" in output and "curl" in output
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 6, output  # nats-server, mock, classifier, dispatcher, jobs, ingress

        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="MoM",
                messages=[{"role": "user", "content": "What causes high blood pressure?"}],
            )
            assert raw.headers["x-vsr-selected-model"] == "medical-lora"
            # The Batch API on the embedded defaults: the sample batch of docs/jobs.md.
            sample = REPO / "docs" / "examples" / "batch-input.jsonl"
            uploaded = client.files.create(file=(sample.name, sample.read_bytes()), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            deadline = time.monotonic() + 60
            while batch.status not in {"completed", "failed", "expired", "cancelled"}:
                assert time.monotonic() < deadline, batch
                time.sleep(0.3)
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed", batch
            assert batch.request_counts is not None and batch.request_counts.completed == 3

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log_path.read_text()
        assert not [pid for pid in pids if _alive(pid)], "every child is stopped"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_up_stops_everything_when_a_child_dies(tmp_path: Path) -> None:
    up, log_path, _ = _start_up(tmp_path)
    try:
        output = log_path.read_text()
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        classifier = int(re.search(r"ready  classifier\s+\(pid (\d+)\)", output).group(1))  # type: ignore[union-attr]
        os.kill(classifier, signal.SIGKILL)
        assert up.wait(60) == 1
        text = log_path.read_text()
        assert "classifier" in text and "exited with status" in text
        assert not [pid for pid in pids if _alive(pid)], "the others are stopped too"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


async def _replicas(urls: list[str], prefix: str) -> dict[str, int]:
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        names = [subjects.lines_stream, subjects.results_stream, f"KV_{subjects.batches_bucket}"]
        return {name: (await js.stream_info(name)).config.num_replicas or 0 for name in names}
    finally:
        await nc.close()


def test_up_on_a_3_node_nats_cluster(tmp_path: Path) -> None:
    up, log_path, port = _start_up(tmp_path, "--nats-cluster", "3")
    try:
        output = log_path.read_text()
        urls = re.findall(r"ready  nats-server\s+(nats://\S+)", output)
        assert len(urls) == 3, output
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 8, output  # 3 nats-servers, mock, classifier, dispatcher, jobs, ingress
        copy = tmp_path / "var" / "config-cluster.yaml"
        config, _ = load_config(copy)
        assert config.jobs.replicas == 3
        assert set(asyncio.run(_replicas(urls, config.nats.subject_prefix)).values()) == {3}
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="MoM",
                messages=[{"role": "user", "content": "What causes high blood pressure?"}],
            )
            assert raw.headers["x-vsr-selected-model"] == "medical-lora"
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log_path.read_text()
        assert not [pid for pid in pids if _alive(pid)], "every child is stopped"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
