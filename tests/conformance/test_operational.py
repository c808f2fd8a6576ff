"""``/health``, ``/version``, ``/metrics``."""

from __future__ import annotations

import re

import httpx

from tests.conformance.conftest import Target
from tests.conformance.helpers import greedy


def test_health_is_an_empty_200(http: httpx.Client) -> None:
    response = http.get("/health")
    assert (response.status_code, response.content) == (200, b"")


def test_version(http: httpx.Client) -> None:
    assert http.get("/version").json() == {"version": "0.32.0"}


def test_metrics_names_and_labels(target: Target, http: httpx.Client) -> None:
    body = {"model": "technical-lora", "messages": [{"role": "user", "content": "hi"}], **greedy(2)}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    labels = f'{{engine="0",model_name="{target.model}"}}'
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert re.search(rf"^vllm:{gauge}{re.escape(labels)} \S+$", text, re.M), gauge
    assert "# TYPE vllm:lora_requests_info gauge" in text
    info = re.findall(
        r'^vllm:lora_requests_info\{max_lora="(\d+)",running_lora_adapters="([^"]*)",'
        r'waiting_lora_adapters="([^"]*)"\} (\S+)$',
        text,
        re.M,
    )
    assert info, text
    assert all(float(value) > 1.7e9 for *_, value in info)  # the value is a timestamp
    for name in ("prompt_tokens_total", "generation_tokens_total"):
        assert re.search(rf"^vllm:{name}{re.escape(labels)} [1-9]", text, re.M), name
    assert re.search(
        rf'^vllm:request_success_total{{engine="0",finished_reason="length",model_name="'
        rf'{re.escape(target.model)}"}} [1-9]',
        text,
        re.M,
    )
