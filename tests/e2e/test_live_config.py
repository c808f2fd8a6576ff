"""The live config under traffic: `loraroute config push` changes a running pipeline, no restart.

A real pipeline (classifier, dispatcher, ingress on the session's nats-server) serves 8 clients
(the official `openai` client, streamed and whole answers) without pause while three revisions
are pushed with the real command: one adds a category and an adapter and changes scores, one
splits a category between two adapter versions (A/B) and one removes an adapter and moves the
base model to a second mock vLLM. Not one request may fail, and each revision's routes must
hold once every service reports it in `/ready`.
"""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.e2e.conftest import Pipeline, start_pipeline
from tests.processes import REPO, Service, free_port

pytestmark = pytest.mark.timeout(300)

ADAPTERS = ("technical-lora", "medical-lora", "medical-lora-v2", "legal-lora")
QUERIES = {
    "technical": "How do I reverse a linked list in Python?",
    "medical": "What are the symptoms of type 2 diabetes?",
    "legal": "What must a valid contract contain to be enforceable in court?",
}


def _mock(folder: Path) -> tuple[Service, str]:
    port = free_port()
    modules = [f"{name}={name}" for name in ADAPTERS]
    service = Service(
        ["mock-vllm", "--port", str(port), "--model", "llama2-7b", "--lora-modules", *modules],
        folder / f"mock-{port}.log",
        health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    return service, f"http://127.0.0.1:{port}"


def _served(mock_url: str) -> int:
    """Requests a mock vLLM has answered (its `vllm:request_success` counter)."""
    text = httpx.get(f"{mock_url}/metrics", timeout=5.0).text
    return int(
        sum(
            float(m.group(1))
            for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
        )
    )


def _push(pipeline: Pipeline, nats_url: str, data: dict[str, Any], name: str) -> int:
    path = pipeline.config_path.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "loraroute", "config", "push", str(path), "--nats", nats_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"pushed as revision (\d+)", done.stdout)
    assert match, done.stdout
    return int(match.group(1))


def _wait_revision(pipeline: Pipeline, revision: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    report: Any = None
    while time.monotonic() < deadline:
        report = httpx.get(f"{pipeline.ingress_url}/ready", timeout=5.0).json()
        if set(report["config_revision"].values()) == {revision}:
            return
        time.sleep(0.1)
    raise AssertionError(f"not every service runs revision {revision}: {report}")


def _route(pipeline: Pipeline, text: str, **headers: str) -> str:
    response = httpx.post(
        f"{pipeline.ingress_url}/v1/chat/completions",
        json={"model": "MoM", "messages": [{"role": "user", "content": text}], "max_tokens": 4},
        headers=headers,
        timeout=30.0,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-vsr-selected-model"]


class _Traffic:
    """8 clients asking without pause until stopped; every outcome is counted."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.ok = 0
        self.failures: list[str] = []
        self.models: Counter[str] = Counter()
        self._stop = asyncio.Event()

    async def _client(self, index: int) -> None:
        client = self.pipeline.async_openai(timeout=60.0)
        texts = [*QUERIES.values(), "Tell me something nice."]
        n = index
        while not self._stop.is_set():
            n += 1
            text = texts[n % len(texts)]
            messages: Any = [{"role": "user", "content": text}]
            try:
                if n % 3 == 0:
                    stream = await client.chat.completions.create(
                        model="MoM", messages=messages, max_tokens=8, stream=True
                    )
                    chunks = [chunk async for chunk in stream]
                    assert chunks, "an empty stream"
                    self.models[chunks[0].model] += 1
                else:
                    answer = await client.chat.completions.create(
                        model="MoM", messages=messages, max_tokens=8
                    )
                    self.models[answer.model] += 1
                self.ok += 1
            except (openai.OpenAIError, AssertionError) as error:
                self.failures.append(f"{text!r}: {error!r}")
        await client.close()

    async def run(self, until: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._client(i)) for i in range(8)]
        await until.wait()
        self._stop.set()
        await asyncio.gather(*tasks)


def test_pushes_under_traffic_change_routes_without_a_failed_request(
    nats_url: str, e2e_folder: Path
) -> None:
    mock_a, url_a = _mock(e2e_folder)
    mock_b, url_b = _mock(e2e_folder)
    port_a, port_b = int(url_a.rsplit(":", 1)[1]), int(url_b.rsplit(":", 1)[1])
    endpoint_a = {"name": "vllm-a", "address": "127.0.0.1", "port": port_a}
    endpoint_b = {"name": "vllm-b", "address": "127.0.0.1", "port": port_b}
    pipeline: Pipeline | None = None
    try:
        # Revision 0, the file: no legal category (its label then means "no category").
        first = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
        legal = next(c for c in first["categories"] if c["name"] == "legal")
        pipeline = start_pipeline(
            nats_url,
            e2e_folder,
            endpoints=[endpoint_a],
            changes={"categories": [c for c in first["categories"] if c["name"] != "legal"]},
        )
        config = yaml.safe_load(pipeline.config_path.read_text(encoding="utf-8"))
        assert _route(pipeline, QUERIES["legal"]) == "llama2-7b"
        assert _route(pipeline, QUERIES["medical"]) == "medical-lora"

        # Revision A: the legal category back; a new medical adapter version outscores the old.
        a = copy.deepcopy(config)
        a["categories"].insert(2, legal)
        a["model_config"]["llama2-7b"]["loras"].append({"name": "medical-lora-v2"})
        medical = next(c for c in a["categories"] if c["name"] == "medical")
        medical["model_scores"] = [
            {"model": "llama2-7b", "lora_name": "medical-lora", "score": 0.9},
            {"model": "llama2-7b", "lora_name": "medical-lora-v2", "score": 1.0},
        ]
        # Revision B: both versions share the top score: an even A/B split, sticky per user.
        b = copy.deepcopy(a)
        medical_b = next(c for c in b["categories"] if c["name"] == "medical")
        for entry in medical_b["model_scores"]:
            entry["score"] = 1.0
        b["routing"] = {**b.get("routing", {}), "ab_key_header": "x-user-id"}
        # Revision C: the old adapter removed; the base model moves to the second vLLM.
        c = copy.deepcopy(a)
        c["model_config"]["llama2-7b"]["loras"] = [
            lora
            for lora in c["model_config"]["llama2-7b"]["loras"]
            if lora["name"] != "medical-lora"
        ]
        medical_c = next(x for x in c["categories"] if x["name"] == "medical")
        medical_c["model_scores"] = [{"model": "llama2-7b", "lora_name": "medical-lora-v2"}]
        c["vllm_endpoints"] = [endpoint_b]
        c["model_config"]["llama2-7b"]["preferred_endpoints"] = ["vllm-b"]

        traffic = _Traffic(pipeline)
        checked: dict[str, Any] = {}

        async def scenario() -> None:
            stop = asyncio.Event()
            runner = asyncio.create_task(traffic.run(stop))
            try:
                await asyncio.sleep(1.0)
                revision = await asyncio.to_thread(_push, pipeline, nats_url, a, "rev-a")
                await asyncio.to_thread(_wait_revision, pipeline, revision)
                checked["a"] = await asyncio.to_thread(
                    lambda: (
                        _route(pipeline, QUERIES["legal"]),
                        _route(pipeline, QUERIES["medical"]),
                    )
                )
                await asyncio.sleep(0.5)
                revision = await asyncio.to_thread(_push, pipeline, nats_url, b, "rev-b")
                await asyncio.to_thread(_wait_revision, pipeline, revision)
                checked["b"] = await asyncio.to_thread(
                    lambda: [
                        _route(pipeline, QUERIES["medical"], **{"x-user-id": f"user-{i}"})
                        for i in range(40)
                    ]
                )
                checked["b_again"] = await asyncio.to_thread(
                    lambda: [
                        _route(pipeline, QUERIES["medical"], **{"x-user-id": f"user-{i}"})
                        for i in range(40)
                    ]
                )
                await asyncio.sleep(0.5)
                revision = await asyncio.to_thread(_push, pipeline, nats_url, c, "rev-c")
                await asyncio.to_thread(_wait_revision, pipeline, revision)
                before = await asyncio.to_thread(lambda: (_served(url_a), _served(url_b)))
                checked["c"] = await asyncio.to_thread(
                    lambda: [_route(pipeline, QUERIES["medical"]) for _ in range(10)]
                )
                await asyncio.sleep(1.0)
                after = await asyncio.to_thread(lambda: (_served(url_a), _served(url_b)))
                checked["c_served"] = (before, after)
            finally:
                stop.set()
                await runner

        asyncio.run(scenario())

        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.ok > 100
        assert checked["a"] == ("legal-lora", "medical-lora-v2")
        split = Counter(checked["b"])
        assert set(split) == {"medical-lora", "medical-lora-v2"}, split
        assert checked["b_again"] == checked["b"]  # each user stays on one variant
        assert set(checked["c"]) == {"medical-lora-v2"}
        (a_before, b_before), (a_after, b_after) = checked["c_served"]
        assert a_after == a_before  # nothing reaches the old endpoint any more
        assert b_after > b_before
        # Traffic followed the revisions: every adapter of every revision answered some of it.
        assert {"legal-lora", "medical-lora-v2", "medical-lora"} <= set(traffic.models)
    finally:
        if pipeline is not None:
            pipeline.stop()
        mock_a.stop()
        mock_b.stop()


def test_an_invalid_push_is_refused_and_the_running_config_stays(
    nats_url: str, e2e_folder: Path, mock: str
) -> None:
    port = int(mock.rsplit(":", 1)[1])
    pipeline = start_pipeline(
        nats_url,
        e2e_folder,
        endpoints=[{"name": "vllm-primary", "address": "127.0.0.1", "port": port}],
    )
    try:
        data = yaml.safe_load(pipeline.config_path.read_text(encoding="utf-8"))
        data["categories"][1]["model_scores"][0]["lora_name"] = "cardio-lora"
        bad = pipeline.config_path.with_name("bad.yaml")
        bad.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "loraroute", "config", "push", str(bad), "--nats", nats_url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert "'cardio-lora' is not declared" in done.stderr
        assert "not pushed; the running config stays" in done.stderr
        report = httpx.get(f"{pipeline.ingress_url}/ready", timeout=5.0).json()
        assert set(report["config_revision"].values()) == {0}
        assert _route(pipeline, QUERIES["medical"]) == "medical-lora"
    finally:
        pipeline.stop()
