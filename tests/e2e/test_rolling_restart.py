"""A rolling restart of every service, one process at a time, under load, fails no request.

Two processes of each service (two ingresses on two ports), a mock vLLM with a small latency,
interactive load at a fixed rate and a batch job through the official `openai` client. Every
process in turn gets SIGTERM, must exit 0, and is replaced; the next one goes only once the
replacement is ready. The client spreads requests over both ingresses and sends a request whose
connection is refused to the other one, and it checks `/ready` of each a few times a second and
sends only to the ready ones, as a load balancer in front of the ingresses does (see
docs/operations.md). An ingress started with `--shutdown-delay` answers `/ready` with 503 for that
long after SIGTERM while still serving, so the balancer has stopped sending to it before its
port closes. The client uses no keep-alive, so a refused connection is all it ever retries.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL_DIR
from tests.e2e.stack import SERVED, Stack, batch_lines, terminate
from tests.processes import Service, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(480)]

RATE_PER_S = 20
BATCH_LINES = 150
CHECK_S = 0.25
SHUTDOWN_DELAY_S = 2.0
ORDER = ("jobs", "classifier", "dispatcher", "ingress")


class Balancer:
    """Round-robin over the ingresses whose `/ready` answered 200 at the last check (every
    CHECK_S, as a load balancer's health check); a refused connection goes to the next one."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.ready = dict.fromkeys(urls, True)
        self.retried = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._checkers = [
            threading.Thread(target=self._check, args=(url,), daemon=True) for url in urls
        ]
        for checker in self._checkers:
            checker.start()

    def _check(self, url: str) -> None:
        while not self._stop.wait(CHECK_S):
            try:
                self.ready[url] = httpx.get(f"{url}/ready", timeout=3.0).status_code == 200
            except httpx.HTTPError:
                self.ready[url] = False

    def close(self) -> None:
        self._stop.set()
        for checker in self._checkers:
            checker.join()

    def ask(self, i: int) -> httpx.Response:
        body = {
            "model": "MoM",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": f"What causes high blood pressure? #{i}"}],
        }
        urls = [url for url in self.urls if self.ready[url]] or self.urls
        for attempt in range(2 * len(self.urls)):
            url = urls[(i + attempt) % len(urls)]
            try:
                return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30.0)
            except httpx.ConnectError:
                with self._lock:
                    self.retried += 1
                time.sleep(0.05)
            except httpx.HTTPError as error:
                ready = dict(self.ready)
                raise AssertionError(
                    f"request {i} to {url} at {time.monotonic():.2f}: {error!r}, ready: {ready}"
                ) from error
        raise AssertionError(f"request {i}: no ingress accepted the connection")


def run_load(
    balancer: Balancer, stop: threading.Event, pool: ThreadPoolExecutor
) -> list[Future[httpx.Response]]:
    """Send RATE_PER_S requests a second until `stop` is set; the futures of all of them."""
    futures: list[Future[httpx.Response]] = []
    next_at = time.monotonic()
    while not stop.is_set():
        futures.append(pool.submit(balancer.ask, len(futures)))
        next_at += 1.0 / RATE_PER_S
        time.sleep(max(0.0, next_at - time.monotonic()))
    return futures


def start(stack: Stack, kind: str, port: int | None) -> Service:
    if kind == "ingress":
        return stack.start(kind, "--shutdown-delay", str(SHUTDOWN_DELAY_S), port=port)
    return stack.start(kind)


@pytest.fixture
def stack(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not MODEL_DIR.exists():
        pytest.fail(f"{MODEL_DIR} is not built; run `make model`")
    stack = Stack(
        nats_url,
        tmp_path_factory.mktemp("rolling"),
        # Room for every adapter at once: with vLLM's default of one, the steady interactive load
        # on one adapter starves the batch lines' other adapters for longer than a drain lasts.
        mock_args=("--ttft-ms", "100", "--max-loras", "4"),
        # /ready pings the workers; a longer ping timeout keeps a busy machine's slow answer from
        # counting as "not ready" on both ingresses at once.
        changes={"jobs": {"concurrency": 2}, "ingress": {"ready_timeout_s": 2.0}},
    )
    try:
        yield stack
    finally:
        stack.down()


def test_rolling_restart_fails_no_request(stack: Stack) -> None:
    stack.start_mock()
    ports = [free_port(), free_port()]
    running: list[tuple[str, int | None, Service]] = []
    for kind in ORDER:
        for k in range(2):
            port = ports[k] if kind == "ingress" else None
            running.append((kind, port, start(stack, kind, port)))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url in urls:
        stack.wait_ready(url)

    client = openai.OpenAI(base_url=f"{urls[0]}/v1", api_key="unused", max_retries=0)
    uploaded = client.files.create(
        file=("in.jsonl", io.BytesIO(batch_lines(BATCH_LINES))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    balancer = Balancer(urls)
    stop = threading.Event()
    restarts: list[tuple[str, float]] = []
    with ThreadPoolExecutor(32) as pool, ThreadPoolExecutor(1) as loader:
        load = loader.submit(run_load, balancer, stop, pool)
        try:
            time.sleep(1.0)
            for index, (kind, port, service) in enumerate(running):
                status, took = terminate(service)
                assert status == 0, f"{kind} exited {status}\n{stack.logs()}"
                restarts.append((kind, took))
                running[index] = (kind, port, start(stack, kind, port))
            time.sleep(1.0)
        finally:
            stop.set()
        futures = load.result()
        responses = [future.result() for future in futures]
    balancer.close()

    failed = [
        (i, r.status_code, r.text[:200]) for i, r in enumerate(responses) if r.status_code != 200
    ]
    assert not failed, failed
    assert len(responses) >= 200
    assert {r.json()["model"] for r in responses} <= SERVED
    print(
        f"{len(responses)} requests, {balancer.retried} refused connections retried, restarts (s): {restarts}"
    )

    deadline = time.monotonic() + 180
    while True:
        final = openai.OpenAI(
            base_url=f"{urls[1]}/v1", api_key="unused", max_retries=2
        ).batches.retrieve(batch.id)
        if final.status in {"completed", "failed", "expired", "cancelled"}:
            break
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)
    assert final.status == "completed", final
    assert final.request_counts is not None
    assert final.request_counts.failed == 0
    assert final.error_file_id is None
    assert final.output_file_id is not None
    rows = [json.loads(row) for row in client.files.content(final.output_file_id).text.splitlines()]
    ids = [row["custom_id"] for row in rows]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(BATCH_LINES)), "lost or doubled lines"
    assert all(row["response"]["status_code"] == 200 for row in rows)
