"""The whole pipeline end to end, driven by the official `openai` client (sync and streaming).

Real nats-server, the built default model in the real classifier, the real dispatcher and
ingress, and the mock vLLM in echo mode: each answer's text is the JSON body vLLM received, so
the tests assert exactly what reached vLLM (model, system prompt, reasoning fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Pipeline, start_mock
from tests.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TECHNICAL = "Explain async/await in JavaScript"
MEDICAL = "What causes high blood pressure?"
GENERAL = "What is the capital of France?"
UNCLAIMED = "Suggest a name for a pet goldfish"


def _endpoint(name: str, port: int, weight: float = 1.0) -> dict[str, Any]:
    return {"name": name, "address": "127.0.0.1", "port": port, "weight": weight}


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline], mock: str) -> Pipeline:
    """Two endpoints, the first a dead port (so every test also exercises failover), and the
    qwen3 reasoning family, so reasoning fields are sent."""
    mock_port = int(mock.rsplit(":", 1)[1])
    return pipeline_factory(
        endpoints=[_endpoint("vllm-dead", free_port()), _endpoint("vllm-primary", mock_port)],
        changes={"model_config": {"llama2-7b": {"reasoning_family": "qwen3"}}},
        mock_url=mock,
    )


@pytest.fixture(scope="module")
def client(pipeline: Pipeline) -> Iterator[openai.OpenAI]:
    with pipeline.openai(timeout=30.0) as c:
        yield c


def _sent(content: str | None) -> dict[str, Any]:
    """The body the mock vLLM received (echo mode answers with it)."""
    assert content is not None
    body: dict[str, Any] = json.loads(content)
    return body


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------ routing


@pytest.mark.parametrize(
    ("text", "adapter", "category", "system_prompt"),
    [
        (TECHNICAL, "technical-lora", "technical", "You are an expert software engineer."),
        (MEDICAL, "medical-lora", "medical", "You are a medical expert."),
    ],
)
def test_guide_queries_route_to_their_adapters(
    client: openai.OpenAI, text: str, adapter: str, category: str, system_prompt: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="MoM", messages=_user(text), extra_headers={"x-request-id": f"e2e-{category}"}
    )
    completion = raw.parse()
    assert raw.headers["x-vsr-selected-model"] == adapter
    assert raw.headers["x-vsr-selected-category"] == category
    assert float(raw.headers["x-vsr-selected-confidence"]) >= 0.6
    assert raw.headers["x-vsr-selected-reasoning"] == "on"
    assert raw.headers["x-request-id"] == f"e2e-{category}"
    assert completion.model == adapter
    sent = _sent(completion.choices[0].message.content)
    assert sent["model"] == adapter
    assert sent["messages"] == [{"role": "system", "content": system_prompt}, *_user(text)]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}


def test_system_prompt_is_inserted_before_the_clients(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="MoM",
        messages=[{"role": "system", "content": "Answer in one line."}, *_user(MEDICAL)],
    )
    system = _sent(completion.choices[0].message.content)["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a medical expert.")
    assert system["content"].endswith("Answer in one line.")


def test_reasoning_off_is_sent_explicitly(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="MoM", messages=_user(GENERAL))
    assert raw.headers["x-vsr-selected-category"] == "general"
    assert raw.headers["x-vsr-selected-model"] == "llama2-7b"
    assert raw.headers["x-vsr-selected-reasoning"] == "off"
    sent = _sent(raw.parse().choices[0].message.content)
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


def test_explicit_model_passes_through_unchanged(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="legal-lora", messages=_user(MEDICAL), temperature=0.25
    )
    sent = _sent(raw.parse().choices[0].message.content)
    assert raw.headers["x-vsr-selected-model"] == "legal-lora"
    assert raw.headers["x-loraroute-route"] == "passthrough"
    assert "x-vsr-selected-category" not in raw.headers
    assert sent["model"] == "legal-lora"
    assert sent["messages"] == _user(MEDICAL), "no system prompt on passthrough"
    assert sent["temperature"] == 0.25, "client fields reach vLLM"


def test_streaming_with_the_openai_client(pipeline: Pipeline, client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="MoM", messages=_user(MEDICAL), stream=True
    ) as response:
        assert response.headers["x-vsr-selected-model"] == "medical-lora"
        chunks = list(response.parse())
    assert all(chunk.model == "medical-lora" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert _sent(text)["model"] == "medical-lora"
    assert chunks[-1].choices[0].finish_reason == "stop"


def _frames(body: bytes) -> list[dict[str, Any] | str]:
    """SSE frames with the per-request `id` and `created` blanked (they differ per request)."""
    frames: list[dict[str, Any] | str] = []
    for event in body.split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: "), event
        payload = event[len(b"data: ") :]
        if payload == b"[DONE]":
            frames.append("[DONE]")
            continue
        frame = json.loads(payload)
        frame["id"], frame["created"] = "-", 0
        frames.append(frame)
    return frames


def _blank_ids(body: bytes) -> bytes:
    body = re.sub(rb'"id":"chatcmpl-[^"]*"', b'"id":"-"', body)
    return re.sub(rb'"created":\d+', b'"created":0', body)


def test_stream_arrives_exactly_as_vllm_produced_it(pipeline: Pipeline) -> None:
    assert pipeline.mock_url is not None
    request = {"model": "MoM", "messages": _user(TECHNICAL), "stream": True}
    routed = httpx.post(f"{pipeline.ingress_url}/v1/chat/completions", json=request, timeout=30)
    assert routed.status_code == 200
    frames = _frames(routed.content)
    echoed = "".join(
        f["choices"][0]["delta"].get("content", "")
        for f in frames
        if isinstance(f, dict) and f["choices"]
    )
    received = json.loads(echoed)  # what the dispatcher sent to vLLM
    direct = httpx.post(f"{pipeline.mock_url}/v1/chat/completions", json=received, timeout=30)
    assert direct.status_code == 200
    assert frames == _frames(direct.content)
    assert _blank_ids(routed.content) == _blank_ids(direct.content), "byte for byte"


# ------------------------------------------------------------------------------ failures


def test_failover_from_a_dead_endpoint(client: openai.OpenAI) -> None:
    for i in range(8):
        completion = client.chat.completions.create(
            model="technical-lora", messages=_user(f"ping {i}")
        )
        assert completion.model == "technical-lora"


def test_bad_requests_are_vllms_errors(pipeline: Pipeline, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4", messages=_user("x"))
    assert not_found.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="MoM", messages=[])
    assert empty.value.body["param"] == "body.messages"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(model="MoM", messages=_user("x" * 300_000))
    assert too_large.value.status_code == 413
    response = httpx.post(
        f"{pipeline.ingress_url}/v1/chat/completions",
        content=b'{"model": "MoM", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_deadline_is_504(pipeline: Pipeline, client: openai.OpenAI) -> None:
    assert pipeline.mock_url is not None
    httpx.post(f"{pipeline.mock_url}/mock/faults", json={"faults": ["hang@*"]}).raise_for_status()
    try:
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as timeout:
            client.chat.completions.create(
                model="MoM",
                messages=_user(MEDICAL),
                extra_headers={"x-loraroute-timeout": "1.0"},
            )
        # vLLM never answers: the 504 is the deadline's, after at least its second.
        assert timeout.value.status_code == 504
        assert time.monotonic() - start >= 1.0
    finally:
        httpx.post(f"{pipeline.mock_url}/mock/faults", json={"faults": []}).raise_for_status()


def test_stream_error_after_first_byte_arrives_in_band(
    pipeline: Pipeline, client: openai.OpenAI
) -> None:
    assert pipeline.mock_url is not None
    httpx.post(
        f"{pipeline.mock_url}/mock/faults", json={"faults": ["stream-500@*,after=2"]}
    ).raise_for_status()
    try:
        routed = httpx.post(
            f"{pipeline.ingress_url}/v1/chat/completions",
            json={"model": "MoM", "messages": _user(MEDICAL), "stream": True},
            timeout=30,
        )
    finally:
        httpx.post(f"{pipeline.mock_url}/mock/faults", json={"faults": []}).raise_for_status()
    assert routed.status_code == 200
    frames = _frames(routed.content)
    assert frames[-1] == "[DONE]"
    error = frames[-2]
    assert isinstance(error, dict) and error["error"]["code"] == 500


# ------------------------------------------------------------------------------ other configs


def test_below_threshold_falls_back_to_the_default_model(
    pipeline_factory: Callable[..., Pipeline], mock: str
) -> None:
    strict = pipeline_factory(
        endpoints=[_endpoint("vllm-primary", int(mock.rsplit(":", 1)[1]))],
        changes={"classifier": {"category_model": {"threshold": 0.999}}},
        mock_url=mock,
    )
    with strict.openai(timeout=30.0) as c:
        raw = c.chat.completions.with_raw_response.create(model="MoM", messages=_user(UNCLAIMED))
    sent = _sent(raw.parse().choices[0].message.content)
    assert raw.headers["x-vsr-selected-model"] == "llama2-7b"
    assert raw.headers["x-loraroute-route"] == "below_threshold"
    assert "x-vsr-selected-category" not in raw.headers
    assert sent["model"] == "llama2-7b"
    assert sent["messages"] == _user(UNCLAIMED), "no category, no system prompt"
    intent = httpx.post(
        f"{strict.ingress_url}/api/v1/classify/intent", json={"text": UNCLAIMED}, timeout=10
    ).json()
    assert intent["classification"]["category"] is None
    assert intent["recommended_model"] == "llama2-7b"


def test_no_classifier_or_no_dispatcher_is_503_at_once(
    pipeline_factory: Callable[..., Pipeline], mock: str
) -> None:
    endpoints = [_endpoint("vllm-primary", int(mock.rsplit(":", 1)[1]))]
    for workers in [(), ("classifier",)]:
        partial = pipeline_factory(endpoints=endpoints, workers=workers)
        if workers:  # wait until the classifier answers pings
            deadline = time.monotonic() + 60
            while not httpx.get(f"{partial.ingress_url}/ready").json().get("classifier"):
                assert time.monotonic() < deadline, "classifier never became ready"
                time.sleep(0.2)
        # A timeout would be a 504 (or the client's own): a 503 is the "no responders" status.
        missing = "dispatcher" if workers else "classifier"
        with partial.openai(timeout=30.0) as c:
            with pytest.raises(openai.InternalServerError) as unavailable:
                c.chat.completions.create(model="MoM", messages=_user(MEDICAL))
            assert unavailable.value.status_code == 503
            assert missing in unavailable.value.message
        assert httpx.get(f"{partial.ingress_url}/ready").status_code == 503


# ------------------------------------------------------------------------------ classification API


def test_classification_api_through_the_real_classifier(pipeline: Pipeline) -> None:
    response = httpx.post(
        f"{pipeline.ingress_url}/api/v1/classify/batch",
        json={"texts": [MEDICAL, GENERAL], "options": {"return_probabilities": True}},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert [r["category"] for r in body["results"]] == ["medical", "general"]
    probabilities = body["results"][0]["probabilities"]
    assert set(probabilities) == {"technical", "medical", "legal", "general"}
    assert body["results"][0]["recommended_model"] == "medical-lora"
    # The model's whole distribution, every label (here one per category), summing to 1.
    labels = body["results"][0]["label_probabilities"]
    assert set(labels) == {"technical", "medical", "legal", "general"}
    assert sum(labels.values()) == pytest.approx(1.0, abs=1e-4)
    assert max(labels, key=labels.__getitem__) == "medical"
    plain = httpx.post(f"{pipeline.ingress_url}/api/v1/classify/batch", json={"texts": [MEDICAL]})
    assert "label_probabilities" not in plain.json()["results"][0]  # only when asked for


def _sample(mock_url: str, series: str) -> float:
    """The value of one series of the mock's `/metrics`, labels matched loosely."""
    metrics = httpx.get(f"{mock_url}/metrics", timeout=5).text
    name, _, labels = series.partition("{")
    pattern = rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$"
    for match in re.finditer(pattern, metrics, re.M):
        if all(label in (match.group(1) or "") for label in labels.rstrip("}").split(",") if label):
            return float(match.group(2))
    raise AssertionError(f"the mock exposes no {series}")


def _running(mock_url: str) -> float:
    return _sample(mock_url, "vllm:num_requests_running")


def _aborted(mock_url: str) -> float:
    return _sample(mock_url, 'vllm:request_success_total{finished_reason="abort"}')


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll `condition` until it holds; False if it never did within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_client_leaving_before_a_whole_answer_stops_generation_upstream(
    pipeline_factory: Callable[..., Pipeline], e2e_folder: Path
) -> None:
    # Not streamed: 200 tokens at 50 ms each keep vLLM busy for 10 s before any byte returns.
    service, port = start_mock(
        e2e_folder, "--itl-ms", "50", "--output-tokens", "200:200", echo=False
    )
    try:
        mock_url = f"http://127.0.0.1:{port}"
        slow = pipeline_factory(endpoints=[_endpoint("vllm-slow", port)], mock_url=mock_url)
        body = {"model": "MoM", "messages": _user(MEDICAL)}
        async with httpx.AsyncClient(timeout=60) as http:
            call = asyncio.create_task(
                http.post(f"{slow.ingress_url}/v1/chat/completions", json=body)
            )
            started = await _until(lambda: call.done() or _running(mock_url) == 1)
            assert started and not call.done(), "the request never reached vLLM"
            assert _running(mock_url) == 1 and _aborted(mock_url) == 0
            call.cancel()  # the client leaves, its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await call
        # The ingress cancels, the dispatcher drops its call to vLLM, vLLM aborts the request.
        stopped = await _until(lambda: _running(mock_url) == 0)
        assert stopped, "vLLM still generates for a client that left"
        assert _aborted(mock_url) == 1
    finally:
        service.stop()


async def test_client_leaving_a_stream_stops_generation_upstream(
    pipeline_factory: Callable[..., Pipeline], e2e_folder: Path
) -> None:
    # A slow stream: 200 tokens at 50 ms each would keep vLLM busy for 10 s.
    service, port = start_mock(
        e2e_folder, "--itl-ms", "50", "--output-tokens", "200:200", echo=False
    )
    try:
        mock_url = f"http://127.0.0.1:{port}"
        slow = pipeline_factory(endpoints=[_endpoint("vllm-slow", port)], mock_url=mock_url)
        body = {"model": "medical-lora", "messages": _user(MEDICAL), "stream": True}
        url = f"{slow.ingress_url}/v1/chat/completions"
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", url, json=body) as response,
        ):
            assert response.status_code == 200
            chunks = response.aiter_raw()  # kept: a dropped iterator closes the response
            await anext(chunks)  # the stream has started upstream
            assert _running(mock_url) == 1 and _aborted(mock_url) == 0
        # The client has gone: the ingress cancels, the dispatcher drops its call to vLLM.
        stopped = await _until(lambda: _running(mock_url) == 0)
        assert stopped, "vLLM still generates for a client that left"
        assert _aborted(mock_url) == 1
    finally:
        service.stop()
