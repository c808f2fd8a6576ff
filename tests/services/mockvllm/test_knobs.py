"""Each knob of ``loraroute mock-vllm``, over real HTTP against a real server process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.services.mockvllm.conftest import StartMock

HI = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.integration


def _post(url: str, path: str = "/v1/chat/completions", /, **body: object) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def _sse(response: httpx.Response) -> list[str]:
    return [e[6:] for e in response.text.strip().split("\n\n")]


def _metric(url: str, pattern: str) -> str | None:
    m = re.search(pattern, httpx.get(url + "/metrics").text, re.M)
    return m.group(1) if m else None


def test_echo_reveals_exactly_what_was_received(start_mock: StartMock) -> None:
    url = start_mock("--echo", "--lora-modules", "medical-lora=/m")
    body = {
        "model": "medical-lora",
        "messages": [{"role": "system", "content": "Be careful."}, *HI],
        "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_effort": "low",
        "x_unknown": [1, 2],
    }
    reply = _post(url, **body).json()
    assert json.loads(reply["choices"][0]["message"]["content"]) == body
    assert reply["choices"][0]["finish_reason"] == "stop"
    frames = _sse(_post(url, **body, stream=True))
    chunks = [json.loads(f) for f in frames[1:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert json.loads(text) == {**body, "stream": True}


def test_output_differs_per_adapter_and_repeats(start_mock: StartMock) -> None:
    url = start_mock("--lora-modules", "a=/a", "b=/b", "c=/a")
    text = {m: _post(url, model=m, messages=HI).json()["choices"][0]["message"]["content"]
            for m in ("base-model", "a", "b", "c")}  # fmt: skip
    assert len({text["base-model"], text["a"], text["b"]}) == 3
    assert text["c"] == text["a"]  # same weights (path), same text
    assert (
        _post(url, model="a", messages=HI).json()["choices"][0]["message"]["content"] == text["a"]
    )


def test_output_tokens_sets_the_natural_length(start_mock: StartMock) -> None:
    url = start_mock("--output-tokens", "5:5")
    usage = _post(url, messages=HI).json()["usage"]
    assert usage["completion_tokens"] == 5
    reply = _post(url, messages=HI, max_tokens=3).json()
    assert (reply["usage"]["completion_tokens"], reply["choices"][0]["finish_reason"]) == (
        3,
        "length",
    )


def test_stop_string_ends_the_text(start_mock: StartMock) -> None:
    url = start_mock("--output-tokens", "20:20")
    full = _post(url, messages=HI).json()["choices"][0]["message"]["content"]
    word = full.split()[3]
    choice = _post(url, messages=HI, stop=[word]).json()["choices"][0]
    assert choice["message"]["content"] == full[: full.index(word)]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", word)


def test_latency_model(start_mock: StartMock) -> None:
    url = start_mock("--ttft-ms", "150", "--itl-ms", "30", "--output-tokens", "6:6")
    started = time.monotonic()
    _post(url, messages=HI)
    assert time.monotonic() - started >= 0.15 + 5 * 0.03
    started = time.monotonic()
    arrivals: list[float] = []
    body = {"messages": HI, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.15  # role chunk comes with the first token
    assert arrivals[-1] - arrivals[1] >= 5 * 0.03 * 0.9


async def _concurrent(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))


async def _watch(url: str, pattern: str, until: asyncio.Future[Any]) -> set[Any]:
    """Every match of `pattern` in `/metrics`, sampled until `until` is done (and once after)."""
    seen: set[Any] = set()
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            finished = until.done()
            seen.update(re.findall(pattern, (await client.get("/metrics")).text, re.M))
            if finished:
                return seen
            await asyncio.sleep(0.02)


async def _running(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M)
    assert match, "the mock exposes vllm:num_requests_running"
    return float(match.group(1))


async def _until_running(url: str, count: float, request: asyncio.Task[Any]) -> None:
    """Wait until `count` requests run, or `request` ended (which the caller then asserts)."""
    while not request.done() and await _running(url) < count:
        await asyncio.sleep(0.02)


async def test_capacity_queues_instead_of_refusing(start_mock: StartMock) -> None:
    url = start_mock("--max-num-seqs", "2", "--itl-ms", "60", "--output-tokens", "5:5")
    running = r"^vllm:num_requests_running\{[^}]*\} (\S+)$"
    waiting = r"^vllm:num_requests_waiting\{[^}]*\} (\S+)$"
    started = time.monotonic()
    requests = asyncio.ensure_future(_concurrent(url, [{"messages": HI}] * 4))
    seen_running, seen_waiting = await asyncio.gather(
        _watch(url, running, requests), _watch(url, waiting, requests)
    )
    responses = await requests
    assert [r.status_code for r in responses] == [200] * 4  # never 429
    assert max(map(float, seen_running)) == 2.0
    assert max(map(float, seen_waiting)) == 2.0
    assert time.monotonic() - started >= 2 * 4 * 0.06  # two waves of 4 inter-token gaps


async def test_admission_limit_answers_503(start_mock: StartMock) -> None:
    url = start_mock("--max-num-seqs", "1", "--max-num-queued-reqs", "1", "--itl-ms", "100",
                     "--output-tokens", "3:3")  # fmt: skip
    responses = await _concurrent(url, [{"messages": HI}] * 3)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]
    refused = next(r for r in responses if r.status_code == 503)
    assert "retry-after" not in refused.headers
    assert refused.json() == {
        "error": {
            "message": "The engine is currently busy and cannot accept new requests. Please try "
            "again later or on a different instance.",
            "type": "Service Unavailable",
            "param": None,
            "code": 503,
        }
    }


@pytest.mark.parametrize(("max_loras", "serialised"), [(1, True), (2, False)])
async def test_more_adapters_than_slots_wait(
    start_mock: StartMock, max_loras: int, serialised: bool
) -> None:
    url = start_mock("--lora-modules", "a=/a", "b=/b", "--max-loras", str(max_loras),
                     "--itl-ms", "50", "--output-tokens", "5:5")  # fmt: skip
    info = r'^vllm:lora_requests_info\{max_lora="\d+",running_lora_adapters="([^"]*)",waiting_lora_adapters="([^"]*)"\}'
    started = time.monotonic()
    requests = asyncio.ensure_future(
        _concurrent(url, [{"model": "a", "messages": HI}, {"model": "b", "messages": HI}])
    )
    seen = await _watch(url, info, requests)
    elapsed = time.monotonic() - started
    assert [r.status_code for r in await requests] == [200, 200]
    if serialised:
        assert elapsed >= 2 * 4 * 0.05  # one generation after the other
        assert seen & {("a", "b"), ("b", "a")}  # one waited while the other held the only slot
        assert not seen & {("a,b", ""), ("b,a", "")}
    else:
        assert seen & {("a,b", ""), ("b,a", "")}  # both held a slot at once
        assert not seen & {("a", "b"), ("b", "a")}


async def test_base_model_requests_need_no_adapter_slot(start_mock: StartMock) -> None:
    # The adapter holds the only slot for 10 s; a base-model request meanwhile runs at once.
    url = start_mock("--lora-modules", "a=/a", "--max-loras", "1", "--itl-ms", "50",
                     "--output-tokens", "200:200")  # fmt: skip
    adapter = asyncio.ensure_future(_concurrent(url, [{"model": "a", "messages": HI}]))
    try:
        await _until_running(url, 1, adapter)
        assert not adapter.done()
        (base,) = await _concurrent(url, [{"messages": HI, "max_tokens": 1}])
        assert base.status_code == 200
        assert not adapter.done(), "the base-model request waited for the adapter"
    finally:
        adapter.cancel()
        await asyncio.gather(adapter, return_exceptions=True)


async def test_lora_swap_ms_delays_an_adapter_taking_a_slot_once(start_mock: StartMock) -> None:
    url = start_mock("--lora-modules", "a=/a", "--lora-swap-ms", "200")
    started = time.monotonic()
    await _concurrent(url, [{"model": "a", "messages": HI}])
    assert time.monotonic() - started >= 0.2
    await _concurrent(url, [{"model": "a", "messages": HI}])  # still in its slot: no swap
    state = httpx.get(url + "/mock/lora").json()
    assert state == {"max_loras": 1, "max_cpu_loras": 1, "gpu": ["a"], "cpu": ["a"],
                     "swaps": 1, "loads": 1}  # fmt: skip
    # While an adapter swaps in (held here for a minute), requests needing no swap are answered.
    url = start_mock("--lora-modules", "a=/a", "--lora-swap-ms", "60000")
    loading = asyncio.ensure_future(_concurrent(url, [{"model": "a", "messages": HI}]))
    try:
        await _until_running(url, 1, loading)
        assert not loading.done()
        (base,) = await _concurrent(url, [{"messages": HI}])
        assert base.status_code == 200
        assert not loading.done(), "a base-model request waited for an adapter's swap"
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)


async def test_an_adapter_out_of_the_cpu_cache_is_read_from_disk(start_mock: StartMock) -> None:
    # Static adapters are read at start-up; with one CPU cache entry only b stays cached.
    url = start_mock("--lora-modules", "a=/a", "b=/b", "--lora-load-ms", "200")
    assert httpx.get(url + "/mock/lora").json()["cpu"] == ["b"]
    started = time.monotonic()
    await _concurrent(url, [{"model": "a", "messages": HI}])
    assert time.monotonic() - started >= 0.2
    state = httpx.get(url + "/mock/lora").json()
    assert (state["cpu"], state["gpu"], state["loads"]) == (["a"], ["a"], 3)


def test_fewer_cpu_than_gpu_slots_is_refused_at_start() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loraroute", "mock-vllm", "--max-loras", "2", "--max-cpu-loras", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "max_cpu_loras (1) must be >= max_loras (2)" in done.stderr


def test_api_key_guards_v1_only(start_mock: StartMock) -> None:
    url = start_mock("--api-key", "sekrit")
    response = httpx.get(url + "/v1/models")
    assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200
    for path in ("/health", "/metrics", "/version"):
        assert httpx.get(url + path).status_code == 200


def test_legacy_errors_flat_shape(start_mock: StartMock) -> None:
    url = start_mock("--legacy-errors", "--no-valid-aliases-suffix")
    response = _post(url, model="nope-lora", messages=HI)
    assert response.status_code == 404
    assert response.json() == {
        "object": "error",
        "message": "The model `nope-lora` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_served_model_name_aliases(start_mock: StartMock) -> None:
    url = start_mock("--model", "/models/base", "--served-model-name", "first", "second",
                     "--lora-modules", '{"name": "x", "path": "/x", "base_model_name": "second"}')  # fmt: skip
    cards = httpx.get(url + "/v1/models").json()["data"]
    assert [(c["id"], c["root"], c["parent"]) for c in cards] == [
        ("first", "/models/base", None),
        ("second", "/models/base", None),
        ("x", "/x", "second"),
    ]
    assert _post(url, model="second", messages=HI).json()["model"] == "first"
    message = _post(url, model="nope", messages=HI).json()["error"]["message"]
    assert message == "The model `nope` does not exist. Valid aliases: first, second."


def test_force_include_usage(start_mock: StartMock) -> None:
    url = start_mock("--enable-force-include-usage")
    frames = _sse(_post(url, messages=HI, stream=True))
    assert json.loads(frames[-2])["choices"] == []
    assert "usage" in json.loads(frames[-2])


def test_runtime_lora_routes_exist_only_when_enabled(start_mock: StartMock) -> None:
    url = start_mock()
    body = {"lora_name": "a", "lora_path": "/a"}
    response = _post(url, "/v1/load_lora_adapter", **body)
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    url = start_mock("--lora-path-check", "any", runtime_lora=True)
    assert _post(url, "/v1/load_lora_adapter", **body).status_code == 200
    assert _post(url, model="a", messages=HI).json()["model"] == "a"


def test_bad_flags_are_refused(start_mock: StartMock) -> None:
    with pytest.raises(RuntimeError, match="bad fault"):
        start_mock("--fault", "boom@1")
    with pytest.raises(RuntimeError, match="LO:HI"):
        start_mock("--output-tokens", "9:2")
