"""`loraroute up` starts the whole system, answers, restarts a crashed child, and stops every
child cleanly; with several processes of each kind every one of them does work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from loraroute import natsauth
from loraroute.natsauth import Credentials
from schemas.config import load_config
from services.common.subjects import Subjects
from tests.processes import REPO, free_port, merge, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_CHAT = {
    "model": "MoM",
    "messages": [{"role": "user", "content": "What causes high blood pressure?"}],
}


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


def _free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1 right now."""
    for _ in range(50):
        first = free_port()
        if first + count > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports")


def _tcp_sockets(pid: int, port: int, state: str) -> int:
    """How many TCP sockets of process `pid` have local port `port` in `state` (hex, as in
    /proc/net/tcp: 0A listening, 01 established)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if (
                int(fields[1].rsplit(":", 1)[1], 16) == port
                and fields[3] == state
                and fields[9] in inodes
            ):
                count += 1
    return count


def _start_up(
    tmp_path: Path, changes: dict[str, Any] | None = None, flags: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], Path, int]:
    port, mock_port = free_port(), free_port()
    config = write_config(
        tmp_path / "config.yaml",
        merge(
            {
                "ingress": {"port": port},
                "vllm_endpoints": [
                    {"name": "vllm-primary", "address": "127.0.0.1", "port": mock_port}
                ],
            },
            changes or {},
        ),
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "loraroute", "up", "--config", str(config),
             "--data-dir", str(tmp_path / "var"), "--mock-echo", *flags],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 180
    while "loraroute is up" not in log_path.read_text(errors="replace"):
        if up.poll() is not None or time.monotonic() > deadline:
            if up.poll() is None:
                up.kill()
                up.wait(10)
            raise AssertionError(log_path.read_text())
        time.sleep(0.2)
    return up, log_path, port


def _ready(output: str) -> dict[str, int]:
    """Each process `up` reported ready: name -> pid."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^ready  (\S+).*\(pid (\d+)\)$", output, re.M)}


def _counter(port: int, name: str, labels: str = "") -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    pattern = rf"^{name}\{{[^}}]*{labels}[^}}]*\}} (\S+)$"
    return sum(float(m[1]) for m in re.finditer(pattern, text, re.M))


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for up in started:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def _stop(up: subprocess.Popen[bytes], log_path: Path, pids: Sequence[int]) -> None:
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, log_path.read_text()
    assert not [pid for pid in pids if _alive(pid)], "every child is stopped"


def test_up_serves_and_stops_cleanly(
    tmp_path: Path, stopper: list[subprocess.Popen[bytes]]
) -> None:
    up, log_path, port = _start_up(tmp_path)
    stopper.append(up)
    output = log_path.read_text()
    assert f"http://127.0.0.1:{port}" in output and "curl" in output
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) == 6, output  # nats-server, mock, classifier, dispatcher, jobs, ingress

    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(**_CHAT)  # type: ignore[call-overload]
        assert raw.headers["x-vsr-selected-model"] == "medical-lora"
        # The Batch API on the embedded defaults: the sample batch of docs/jobs.md.
        sample = REPO / "docs" / "examples" / "batch-input.jsonl"
        batch = _run_batch(client, sample.read_bytes())
        assert batch.request_counts is not None and batch.request_counts.completed == 3

    _stop(up, log_path, pids)


def _run_batch(client: openai.OpenAI, lines: bytes) -> Any:
    uploaded = client.files.create(file=("batch.jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while batch.status not in {"completed", "failed", "expired", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    return batch


def test_up_with_two_of_each_spreads_the_work(
    tmp_path: Path, stopper: list[subprocess.Popen[bytes]]
) -> None:
    metrics = _free_ports(6)
    up, log_path, port = _start_up(
        tmp_path,
        # Small pulls, so one jobs worker cannot take the whole batch in one fetch.
        {"jobs": {"concurrency": 4}},
        ["--classifiers", "2", "--dispatchers", "2", "--ingresses", "2", "--jobs", "2",
         "--metrics-port", str(metrics)],
    )  # fmt: skip
    stopper.append(up)
    ready = _ready(log_path.read_text())
    names = ["classifier-1", "classifier-2", "dispatcher-1", "dispatcher-2", "jobs-1", "jobs-2"]
    assert set(ready) >= {*names, "ingress-1", "ingress-2", "nats-server"}, ready
    ingresses = [ready["ingress-1"], ready["ingress-2"]]
    deadline = time.monotonic() + 60
    while not all(_tcp_sockets(pid, port, "0A") for pid in ingresses):
        assert time.monotonic() < deadline, "both ingresses listen on the shared port"
        time.sleep(0.2)

    # Interactive: 32 clients, each on its own connection, all held open together so the
    # established sockets show which ingress process took each.
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) for _ in range(32)]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda c: c.post("/v1/chat/completions", json=_CHAT), clients))
        assert [a.status_code for a in answers] == [200] * 32
        assert {a.headers["x-vsr-selected-model"] for a in answers} == {"medical-lora"}
        held = [_tcp_sockets(pid, port, "01") for pid in ingresses]
        assert all(held) and sum(held) == 32, held
    finally:
        for c in clients:
            c.close()

    # A batch of 40 lines, each answered exactly once.
    lines = b"".join(
        json.dumps(
            {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": _CHAT}
        ).encode()
        + b"\n"
        for i in range(40)
    )
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
    ) as client:
        batch = _run_batch(client, lines)
        assert batch.request_counts is not None and batch.request_counts.completed == 40
        output = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(
        f"l{i}" for i in range(40)
    )

    # Every worker process did its share (metrics ports in start order, as `up` printed them).
    work = {
        name: _counter(metrics + i, metric, labels)
        for i, (name, metric, labels) in enumerate(
            [
                ("classifier-1", "loraroute_routed_total", ""),
                ("classifier-2", "loraroute_routed_total", ""),
                ("dispatcher-1", "loraroute_dispatch_requests_total", 'status="200"'),
                ("dispatcher-2", "loraroute_dispatch_requests_total", 'status="200"'),
                ("jobs-1", "loraroute_jobs_lines_total", 'outcome="completed"'),
                ("jobs-2", "loraroute_jobs_lines_total", 'outcome="completed"'),
            ]
        )
    }
    assert all(work.values()), work
    assert work["classifier-1"] + work["classifier-2"] == 32 + 40, work
    assert work["jobs-1"] + work["jobs-2"] == 40, work

    _stop(up, log_path, list(ready.values()))


def test_up_restarts_a_killed_classifier(
    tmp_path: Path, stopper: list[subprocess.Popen[bytes]]
) -> None:
    metrics = _free_ports(4)
    up, log_path, port = _start_up(
        tmp_path,
        # A request caught in the killed classifier is answered 504 at this deadline.
        {"ingress": {"request_timeout_s": 5.0}},
        ["--classifiers", "2", "--metrics-port", str(metrics)],
    )
    stopper.append(up)
    ready = _ready(log_path.read_text())
    killed = ready["classifier-1"]

    statuses: list[int] = []
    errors: list[httpx.HTTPError] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/v1/chat/completions", json=_CHAT).status_code)
                except httpx.HTTPError as error:
                    errors.append(error)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(1.0)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (
            found := re.search(r"restarted classifier-1 \(pid (\d+)\)", log_path.read_text())
        ):
            assert up.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        restarted = int(found[1])
        # The new process loads its model, subscribes and takes its share again.
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):  # not serving metrics yet
                if _counter(metrics, "loraroute_routed_total") > 0:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
    finally:
        stop.set()
        loader.join(60)
    text = log_path.read_text()
    assert f"classifier-1 (pid {killed}) exited with status -9; restarting it in 0.5 s" in text
    assert restarted != killed and _alive(restarted) and not _alive(killed)
    # One request at a time: at most the one in flight on the killed process fails, as a 504.
    assert not errors and len(statuses) > 20 and set(statuses) <= {200, 504}, (errors, statuses)
    assert statuses.count(504) <= 1, statuses
    assert up.poll() is None, "the rest kept running"

    _stop(up, log_path, [*ready.values(), restarted])


async def _replicas(urls: list[str], prefix: str, admin: Credentials) -> dict[str, int]:
    nc = await nats.connect(servers=urls, user=admin.user, password=admin.password)
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        names = [subjects.lines_stream, subjects.results_stream, f"KV_{subjects.batches_bucket}"]
        return {name: (await js.stream_info(name)).config.num_replicas or 0 for name in names}
    finally:
        await nc.close()


def test_up_on_a_3_node_nats_cluster(tmp_path: Path) -> None:
    up, log_path, port = _start_up(tmp_path, flags=("--nats-cluster", "3"))
    try:
        output = log_path.read_text()
        urls = re.findall(r"ready  nats-server\s+(nats://\S+)", output)
        assert len(urls) == 3, output
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 8, output  # 3 nats-servers, mock, classifier, dispatcher, jobs, ingress
        copy = tmp_path / "var" / "config-cluster.yaml"
        config, _ = load_config(copy)
        assert config.jobs.replicas == 3
        # Every node enforces the users `up` made (and the routes their own login).
        _, users = natsauth.read_credentials(tmp_path / "var" / "nats-credentials.json")
        replicas = asyncio.run(_replicas(urls, config.nats.subject_prefix, users["admin"]))
        assert set(replicas.values()) == {3}
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


def test_up_restarts_a_killed_ingress_behind_keys_and_an_admin_address(
    tmp_path: Path, stopper: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-up-0123456789abcdef"
    monkeypatch.setenv("LORAROUTE_API_KEYS", key)
    admin = free_port()
    up, log_path, port = _start_up(tmp_path, {"ingress": {"admin": {"port": admin}}})
    stopper.append(up)
    output = log_path.read_text()
    ready = _ready(output)
    assert f"/ready and /metrics on http://127.0.0.1:{admin}" in output
    assert "authorization: Bearer $KEY" in output
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {key}"}
    assert httpx.get(f"http://127.0.0.1:{admin}/ready").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 404
    assert httpx.post(f"{base}/v1/chat/completions", json=_CHAT).status_code == 401
    assert httpx.post(f"{base}/v1/chat/completions", json=_CHAT, headers=auth).status_code == 200

    os.kill(ready["ingress"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (found := re.search(r"restarted ingress \(pid (\d+)\)", log_path.read_text())):
        assert up.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    restarted = int(found[1])
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            answer = httpx.post(f"{base}/v1/chat/completions", json=_CHAT, headers=auth, timeout=30)
            if answer.status_code == 200:
                break
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    text = log_path.read_text()
    assert f"ingress (pid {ready['ingress']}) exited with status -9; restarting it in 0.5 s" in text
    assert httpx.get(f"http://127.0.0.1:{admin}/ready").status_code == 200
    others = [pid for name, pid in ready.items() if name != "ingress"]
    assert all(_alive(pid) for pid in others), "the rest kept running"
    assert key not in text, "the key is never logged"

    _stop(up, log_path, [*others, restarted])
