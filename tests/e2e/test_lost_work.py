"""Nothing waits for dead work: every service as a real process, each failure under load.

Two classifiers, two dispatchers, one ingress and a mock vLLM on a nats-server of the test's
own. Requests go 20 at a time (the classifiers hold each for up to 3 s, `batching.max_wait_ms`
with `run_when_idle` off, and the mock takes 3 s to answer, so all 20 are in flight, in a
classifier's queue or in a dispatcher's call to vLLM, when the failure comes). Then, in turn:
one classifier is killed (SIGKILL), one dispatcher is killed, the nats-server is killed and
started again, and vLLM hangs.
Every request must end with an answer or an explicit error (502, 503, or 504 with the
first-byte timeout's message for the hang), never by waiting for its deadline, which is set
large (120 s) so that a pass proves the liveness bound works; the times from each failure to
each error are printed (docs/benchmarks.md records them). The default liveness settings run:
heartbeat 1 s, stall bound 5 s.

Cancels: two clients send the same `x-request-id`; one leaves at once, the other must still get
its answer, because the pipeline keys on the ingress's own id.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loraroute.natsserver import NatsServer
from tests.e2e.conftest import MODEL_DIR
from tests.e2e.stack import Stack
from tests.processes import Service, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

IN_FLIGHT = 20
DEADLINE_S = 120.0
QUESTIONS = [
    "What causes high blood pressure?",
    "How do I reverse a linked list in Python?",
    "What are the elements of a valid contract?",
]


@dataclass
class Result:
    status: int | None  # None: no HTTP answer at all
    ended: float  # monotonic
    body: str


def ask(url: str, i: int, headers: dict[str, str] | None = None) -> Result:
    body = {
        "model": "MoM",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} #{i}"}],
    }
    try:
        response = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers=headers, timeout=DEADLINE_S + 10
        )
    except httpx.HTTPError as error:
        return Result(None, time.monotonic(), repr(error))
    return Result(response.status_code, time.monotonic(), response.text)


class Burst:
    """`IN_FLIGHT` requests at once, each in its own thread."""

    def __init__(self, url: str, pool: ThreadPoolExecutor) -> None:
        self.started = time.monotonic()
        self.futures = [pool.submit(ask, url, i) for i in range(IN_FLIGHT)]

    def results(self) -> list[Result]:
        return [future.result() for future in self.futures]


def check(name: str, results: list[Result], failed_at: float, allowed: set[int]) -> list[float]:
    """Every request ended with a status in `allowed` (a request that waited for its deadline
    would be a 504 saying so, or no answer at all); prints and returns the seconds from the
    failure to each error."""
    statuses = [r.status for r in results]
    assert set(statuses) <= allowed, [(r.status, r.body[:300]) for r in results]
    for result in results:
        assert "deadline" not in result.body, result.body
        if result.status != 200:
            assert '"error"' in result.body, result.body
    errors = sorted(round(r.ended - failed_at, 2) for r in results if r.status != 200)
    counts = {s: statuses.count(s) for s in sorted(set(statuses), key=str)}
    slowest = max(r.ended - failed_at for r in results)
    print(
        f"lost-work {name}: {len(results)} requests, statuses {counts}, seconds from the "
        f"failure to each error {errors}, to the last answer {slowest:.2f}"
    )
    return errors


def kill(service: Service) -> float:
    """SIGKILL `service`; the monotonic time it was killed."""
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    service.stop()  # reaps it
    return killed


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "nats", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack(nats: NatsServer, tmp_path: Path) -> Iterator[Stack]:
    if not MODEL_DIR.exists():
        pytest.fail(f"{MODEL_DIR} is not built; run `make model`")
    stack = Stack(
        nats.url,
        tmp_path / "stack",
        mock_args=("--ttft-ms", "3000", "--max-loras", "4"),
        changes={
            "ingress": {"request_timeout_s": DEADLINE_S, "ready_timeout_s": 2.0},
            # Requests wait up to 3 s in a classifier's queue: long enough to be held there,
            # and to have been told so by a keepalive, when the classifier is killed.
            "batching": {"max_wait_ms": 3000, "run_when_idle": False},
            "dispatcher": {"first_byte_timeout_s": 8.0},
        },
    )
    try:
        yield stack
    finally:
        stack.down()


def test_no_request_waits_for_dead_work(stack: Stack, nats: NatsServer) -> None:
    stack.start_mock()
    classifiers = [stack.start("classifier") for _ in range(2)]
    dispatchers = [stack.start("dispatcher") for _ in range(2)]
    port = free_port()
    stack.start("ingress", port=port)
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url)
    assert ask(url, 0).status == 200

    with ThreadPoolExecutor(2 * IN_FLIGHT) as pool:
        # Two clients with one x-request-id: the one that leaves cancels only its own request.
        shared = {"x-request-id": "shared-id-1"}
        stays = pool.submit(ask, url, 1, shared)
        time.sleep(0.3)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "MoM", "messages": [{"role": "user", "content": "leaving"}]},
                headers=shared,
                timeout=0.5,
            )
        stayed = stays.result()
        assert stayed.status == 200, stayed.body

        # A classifier dies while its queue holds requests.
        burst = Burst(url, pool)
        time.sleep(2.5)
        killed = kill(classifiers[0])
        check("classifier killed", burst.results(), killed, {200, 503})

        # A dispatcher dies while its calls to vLLM run.
        burst = Burst(url, pool)
        time.sleep(4.5)
        killed = kill(dispatchers[0])
        check("dispatcher killed", burst.results(), killed, {200, 502, 503})

        # The nats-server dies and comes back a second later.
        burst = Burst(url, pool)
        time.sleep(2.0)
        assert nats.pid is not None
        os.kill(nats.pid, signal.SIGKILL)
        lost_at = time.monotonic()
        nats.stop()
        threading.Event().wait(1.0)
        nats.start()
        errors = check("nats-server restarted", burst.results(), lost_at, {200, 503})
        assert errors, "every request survived a bus that lost its replies"
        stack.wait_ready(url)
        assert ask(url, 2).status == 200

        # vLLM hangs: the first-byte timeout (8 s here) answers, not the deadline.
        httpx.post(
            f"http://127.0.0.1:{stack.mock_port}/mock/faults", json={"faults": ["hang@*"]}
        ).raise_for_status()
        hung = Burst(url, pool)
        results = hung.results()
        check("vLLM hangs", results, hung.started, {504})
        # The client is told what happened, not the setting's name (that is in the dispatcher's log).
    assert all("did not answer in time" in r.body for r in results)
