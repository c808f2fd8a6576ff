"""SIGTERM drains every service: intake stops, work already accepted finishes, the process exits 0.

One stack (one process of each service, a mock vLLM that takes 1.5 s to answer, a classifier
that holds a batch open for 0.6 s) on the session's nats-server. For each service a request is
sent, the service gets SIGTERM while the request sits in it, and the request still gets its 200;
then a replacement is started for the next test.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL_DIR
from tests.e2e.stack import Stack, batch_lines, terminate
from tests.processes import Service, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

TTFT_MS = 1500
QUEUE_MS = 600
DELAY_S = 1.0


class Drained:
    """The stack, its ingress URL, and the one running process of each kind."""

    def __init__(self, stack: Stack, port: int) -> None:
        self.stack = stack
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.running: dict[str, Service] = {}

    def start(self, kind: str) -> None:
        if kind == "ingress":
            service = self.stack.start(kind, "--shutdown-delay", str(DELAY_S), port=self.port)
        else:
            service = self.stack.start(kind)
        self.running[kind] = service


@pytest.fixture(scope="module")
def drained(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    if not MODEL_DIR.exists():
        pytest.fail(f"{MODEL_DIR} is not built; run `make model`")
    stack = Stack(
        nats_url,
        tmp_path_factory.mktemp("drain"),
        mock_args=("--ttft-ms", str(TTFT_MS)),
        changes={
            "batching": {"max_wait_ms": QUEUE_MS, "max_batch_size": 64, "run_when_idle": False},
            "jobs": {"concurrency": 4},
        },
    )
    system = Drained(stack, free_port())
    try:
        stack.start_mock()
        for kind in ("classifier", "dispatcher", "jobs", "ingress"):
            system.start(kind)
        stack.wait_ready(system.url)
        yield system
    finally:
        stack.down()


def ask(url: str, text: str) -> httpx.Response:
    body = {"model": "MoM", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30.0)


def sigterm_during_request(system: Drained, kind: str, after_s: float) -> None:
    """Send a request, SIGTERM `kind` `after_s` later, assert the 200 and the clean exit."""
    with ThreadPoolExecutor(1) as pool:
        pending: Future[httpx.Response] = pool.submit(ask, system.url, "What causes asthma?")
        time.sleep(after_s)
        assert not pending.done(), "the request finished before the signal"
        status, took = terminate(system.running.pop(kind))
        response = pending.result()
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "medical-lora"
    assert status == 0, system.stack.logs()
    assert took < 15.0


def test_ingress_finishes_the_requests_it_holds(drained: Drained) -> None:
    sigterm_during_request(drained, "ingress", after_s=0.3)
    with pytest.raises(httpx.ConnectError):  # intake stopped: the port is closed
        ask(drained.url, "What causes asthma?")
    drained.start("ingress")


def test_ingress_says_draining_and_serves_during_its_shutdown_delay(drained: Drained) -> None:
    service = drained.running.pop("ingress")
    assert service.process is not None
    started = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{drained.url}/ready", timeout=5.0)
    assert ready.status_code == 503 and ready.json() == {"ready": False, "draining": True}
    response = ask(drained.url, "What causes asthma?")  # sent inside the delay, still served
    assert response.status_code == 200, response.text
    assert service.process.wait(30) == 0, service.log_tail()
    assert time.monotonic() - started >= DELAY_S
    assert '"ingress_draining"' in service.log_tail()
    service.stop()
    drained.start("ingress")


def test_classifier_answers_its_queue(drained: Drained) -> None:
    # The request waits QUEUE_MS in the classifier's batch when the signal comes.
    sigterm_during_request(drained, "classifier", after_s=0.2)
    drained.start("classifier")
    drained.stack.wait_ready(drained.url)


def test_dispatcher_finishes_its_calls_to_vllm(drained: Drained) -> None:
    # Past the classifier's QUEUE_MS, inside the mock's TTFT_MS.
    sigterm_during_request(drained, "dispatcher", after_s=(QUEUE_MS + 500) / 1000)
    drained.start("dispatcher")
    drained.stack.wait_ready(drained.url)


def test_jobs_worker_finishes_the_lines_it_pulled(drained: Drained) -> None:
    client = openai.OpenAI(base_url=f"{drained.url}/v1", api_key="unused", max_retries=0)
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_lines(24))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def done() -> int:
        counts = client.batches.retrieve(batch.id).request_counts
        return 0 if counts is None else counts.completed + counts.failed

    deadline = time.monotonic() + 60
    while done() < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    before = done()
    assert 4 <= before < 20
    status, took = terminate(drained.running.pop("jobs"))
    assert status == 0, drained.stack.logs()
    assert took < 15.0
    # No jobs worker runs now: whatever was finished since the signal, the draining one did.
    after = done()
    assert after > before, "lines pulled before the signal did not finish"
    drained.start("jobs")
    deadline = time.monotonic() + 120
    while (final := client.batches.retrieve(batch.id)).status != "completed":
        assert final.status not in {"failed", "expired", "cancelled"}, final
        assert time.monotonic() < deadline, drained.stack.logs()
        time.sleep(0.3)
    assert final.output_file_id is not None
    rows = client.files.content(final.output_file_id).text.splitlines()
    ids = sorted(json.loads(row)["custom_id"] for row in rows)
    assert ids == sorted(f"line-{i}" for i in range(24))
    assert final.error_file_id is None
