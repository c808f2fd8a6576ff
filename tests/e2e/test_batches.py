"""Batch jobs end to end: the official `openai` client against a real ingress, jobs worker,
classifier, dispatcher and mock vLLM, on a nats-server of this module's own with JetStream on file
storage. Nothing is lost and nothing runs twice, through SIGKILL of any worker, a nats-server
restart, a poison line, a cancel and an expired completion window.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest
from nats.js.api import DeliverPolicy
from openai.types import Batch

from loraroute.natsserver import NatsServer
from tests.e2e.conftest import MODEL_DIR
from tests.processes import Service, free_port, write_stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

QUESTIONS = [
    "What causes high blood pressure?",
    "How do I reverse a linked list in Python?",
    "What are the elements of a valid contract?",
    "What is the capital of France?",
    "What are the symptoms of type 2 diabetes?",
    "Explain async/await in JavaScript",
    "Can my landlord keep my deposit for normal wear and tear?",
    "Suggest a name for a pet goldfish",
]
SERVED = {"llama2-7b", "medical-lora", "technical-lora", "legal-lora"}
FINAL = {"completed", "failed", "expired", "cancelled"}


def batch_input(lines: int, poison: int | None = None) -> bytes:
    rows = []
    for i in range(lines):
        text = QUESTIONS[i % len(QUESTIONS)] + f" (#{i})"
        if i == poison:
            text += " POISON"
        body = {"model": "MoM", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
        rows.append(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
        )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class BatchSystem:
    """Every service as a real process on one file-storage nats-server; each can be killed with
    SIGKILL and started again, and the nats-server restarted on its store."""

    def __init__(self, folder: Path, *, mock_args: tuple[str, ...] = (), jobs: dict[str, Any]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = f"b{uuid.uuid4().hex[:8]}"
        self.nats_port, self.mock_port, self.port = free_port(), free_port(), free_port()
        self.nats = NatsServer(store_dir=folder / "nats", port=self.nats_port)
        self.mock_args = mock_args
        self.config = write_stack_config(
            folder / "config.yaml",
            prefix=self.prefix,
            mock_port=self.mock_port,
            changes={"ingress": {"port": self.port}, "jobs": jobs},
        )
        self.services: dict[str, Service] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str) -> None:
        common = ["--nats", self.nats.url, "--config", str(self.config)]
        log = self.folder / f"{name}.log"
        if name == "mock-vllm":
            args = ["mock-vllm", "--port", str(self.mock_port), "--model", "llama2-7b"]
            args += ["--lora-modules", *(f"{a}={a}" for a in sorted(SERVED - {"llama2-7b"}))]
            service = Service(
                [*args, *self.mock_args],
                log,
                health_url=f"http://127.0.0.1:{self.mock_port}/health",
            )
        elif name == "ingress":
            service = Service(["ingress", *common], log, health_url=f"{self.url}/health")
        else:
            service = Service([name, *common], log)
        self.services[name] = service.start(timeout_s=60.0)

    def kill(self, name: str) -> None:
        process = self.services[name].process
        assert process is not None and process.poll() is None, f"{name} is not running"
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def up(self) -> BatchSystem:
        self.nats.start()
        for name in ("mock-vllm", "classifier", "dispatcher", "jobs", "ingress"):
            self.start(name)
        # Ready: the ingress reaches a classifier and a dispatcher (`/ready` pings them).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(self.logs())

    def restart_nats(self, down_s: float = 1.0) -> None:
        self.nats.stop()
        time.sleep(down_s)
        self.nats = NatsServer(store_dir=self.folder / "nats", port=self.nats_port)
        self.nats.start()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{s.log_tail(2000)}" for n, s in self.services.items())

    def down(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.nats.stop()


def openai_client(system: BatchSystem) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{system.url}/v1", api_key="unused", max_retries=0, timeout=10)


@pytest.fixture
def make_system(tmp_path: Path) -> Iterator[Any]:
    started: list[BatchSystem] = []

    def make(*, mock_args: tuple[str, ...] = (), **jobs: Any) -> BatchSystem:
        if not MODEL_DIR.exists():
            pytest.fail(f"{MODEL_DIR} is not built; run `make model`")
        system = BatchSystem(tmp_path / f"s{len(started)}", mock_args=mock_args, jobs=jobs)
        started.append(system)
        return system.up()

    try:
        yield make
    finally:
        for system in started:
            system.down()


def submit(client: openai.OpenAI, data: bytes, window: str = "24h") -> Batch:
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window=window
    )


def wait(
    system: BatchSystem, batch_id: str, *, until: Any = None, timeout_s: float = 240.0
) -> Batch:
    """Poll the batch (through ingress restarts) until `until(batch)` holds, or it is final."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            batch = openai_client(system).batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.InternalServerError):
            time.sleep(0.3)
            continue
        if (until is not None and until(batch)) or batch.status in FINAL:
            return batch
        time.sleep(0.25)
    raise AssertionError(f"batch {batch_id} not done after {timeout_s} s\n{system.logs()}")


def done(batch: Batch) -> int:
    counts = batch.request_counts
    return 0 if counts is None else counts.completed + counts.failed


def results(
    client: openai.OpenAI, batch: Batch
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def read(file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]

    return read(batch.output_file_id), read(batch.error_file_id)


def assert_each_line_once(
    client: openai.OpenAI, batch: Batch, lines: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    output, errors = results(client, batch)
    ids = [row["custom_id"] for row in output + errors]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(lines)), "lost or doubled lines"
    assert batch.request_counts is not None
    assert batch.request_counts.total == lines
    assert batch.request_counts.completed == len(output)
    assert batch.request_counts.failed == len(errors)
    for row in output:
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["model"] in SERVED
        assert row["error"] is None
    return output, errors


def test_a_2000_line_batch_answers_every_line_once(make_system: Any) -> None:
    system = make_system()
    client = openai_client(system)
    batch = submit(client, batch_input(2000))
    assert batch.status == "validating"
    finished = wait(system, batch.id)
    assert finished.status == "completed", finished
    output, errors = assert_each_line_once(client, finished, 2000)
    assert not errors
    models = {row["custom_id"]: row["response"]["body"]["model"] for row in output}
    assert models["line-0"] == "medical-lora"  # routed as an interactive request would be
    assert models["line-1"] == "technical-lora"
    listed = client.batches.list(limit=5)
    assert batch.id in [b.id for b in listed.data]


SLOW = ("--ttft-ms", "150")


@pytest.mark.parametrize("victim", ["dispatcher", "classifier", "jobs", "ingress"])
def test_sigkill_mid_batch_loses_and_doubles_nothing(make_system: Any, victim: str) -> None:
    system = make_system(mock_args=SLOW, concurrency=8, line_timeout_s=5.0, backoff_s=[0.5])
    client = openai_client(system)
    batch = submit(client, batch_input(300))
    wait(system, batch.id, until=lambda b: done(b) >= 40)
    system.kill(victim)
    time.sleep(0.5)
    system.start(victim)
    finished = wait(system, batch.id)
    assert finished.status == "completed", f"{finished}\n{system.logs()}"
    _, errors = assert_each_line_once(openai_client(system), finished, 300)
    assert not errors, errors[:3]


def test_a_nats_restart_mid_batch_loses_and_doubles_nothing(make_system: Any) -> None:
    system = make_system(mock_args=SLOW, concurrency=8, line_timeout_s=5.0, backoff_s=[0.5])
    client = openai_client(system)
    batch = submit(client, batch_input(300))
    wait(system, batch.id, until=lambda b: done(b) >= 40)
    system.restart_nats()
    finished = wait(system, batch.id)
    assert finished.status == "completed", f"{finished}\n{system.logs()}"
    _, errors = assert_each_line_once(client, finished, 300)
    assert not errors, errors[:3]


async def _dead_letters(system: BatchSystem) -> list[dict[str, Any]]:
    nc = await nats.connect(system.nats.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"{system.prefix}.jobs.dead.*", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        letters = []
        try:
            while True:
                letters.append(json.loads((await sub.next_msg(timeout=2.0)).data))
        except nats.errors.TimeoutError:
            return letters
    finally:
        await nc.close()


def test_a_poison_line_goes_to_the_error_file_and_the_dead_letters(make_system: Any) -> None:
    system = make_system(mock_args=("--fault", "500@~POISON"), max_deliver=2, backoff_s=[0.2])
    client = openai_client(system)
    batch = submit(client, batch_input(40, poison=7))
    finished = wait(system, batch.id)
    assert finished.status == "completed", finished
    _, errors = assert_each_line_once(client, finished, 40)
    assert [row["custom_id"] for row in errors] == ["line-7"]
    letters = asyncio.run(_dead_letters(system))
    assert [(d["custom_id"], d["deliveries"]) for d in letters] == [("line-7", 2)]
    assert b"POISON" in base64.b64decode(letters[0]["payload"])
    assert letters[0]["error"]


def test_cancel_stops_the_remaining_lines(make_system: Any) -> None:
    system = make_system(mock_args=SLOW, concurrency=4)
    client = openai_client(system)
    batch = submit(client, batch_input(300))
    wait(system, batch.id, until=lambda b: done(b) >= 10)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    finished = wait(system, batch.id)
    assert finished.status == "cancelled", finished
    output, errors = assert_each_line_once(client, finished, 300)
    assert 10 <= len(output) < 300
    assert {row["error"]["code"] for row in errors} == {"batch_cancelled"}
    with pytest.raises(openai.APIStatusError):
        client.batches.cancel(batch.id)  # a final batch cannot be cancelled


def test_a_batch_past_its_window_expires_keeping_finished_lines(make_system: Any) -> None:
    system = make_system(mock_args=("--ttft-ms", "300"), concurrency=4, completion_windows=["8s"])
    client = openai_client(system)
    batch = submit(client, batch_input(200), window="8s")
    finished = wait(system, batch.id, timeout_s=120)
    assert finished.status == "expired", finished
    output, errors = assert_each_line_once(client, finished, 200)
    assert output, "lines finished before the window closed are kept"
    assert errors and {row["error"]["code"] for row in errors} == {"batch_expired"}


EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _example(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_the_docs_examples_run_a_batch(make_system: Any, tmp_path: Path) -> None:
    system = make_system()
    repo = EXAMPLES.parents[1]
    # The official client (docs/examples/batch-openai.py) on the sample file.
    done = _example([sys.executable, str(EXAMPLES / "batch-openai.py"), f"{system.url}/v1"], repo)
    assert done.returncode == 0, done.stderr
    assert " completed " in done.stdout.splitlines()[0]
    assert [line.split()[:2] for line in done.stdout.splitlines()[1:]] == [
        ["q1", "medical-lora"],
        ["q2", "technical-lora"],
        ["q3", "legal-lora"],
    ]
    # The command line (docs/examples/batch-cli.sh), run as written against this ingress.
    script = (
        (EXAMPLES / "batch-cli.sh")
        .read_text()
        .replace("loraroute batch ", f"loraroute batch --url {system.url} ")
    )
    script = script.replace("docs/examples/", f"{EXAMPLES}/")
    done = _example(["bash", "-e", "-c", script], tmp_path)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["q1", "q2", "q3"]
    # The raw queue (docs/examples/raw-queue.py), straight on NATS; run twice, as after a crash:
    # the second run queues nothing new and reads the same answers back.
    raw = [sys.executable, str(EXAMPLES / "raw-queue.py"), system.nats.url, "docs-raw"]
    raw_example = EXAMPLES / "raw-queue.py"
    text = raw_example.read_text()
    assert 'PREFIX = "loraroute"' in text
    patched = tmp_path / "raw-queue.py"
    patched.write_text(text.replace('PREFIX = "loraroute"', f'PREFIX = "{system.prefix}"'))
    raw[1] = str(patched)
    first, second = _example(raw, repo), _example(raw, repo)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert [line.split()[0] for line in first.stdout.splitlines()] == ["q1", "q2", "q3"]
    assert "medical-lora" in first.stdout.splitlines()[0]
