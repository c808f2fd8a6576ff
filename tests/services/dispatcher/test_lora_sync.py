"""Adapter affinity and runtime adapter loading against real mock vLLM processes (and, for the
whole dispatcher, a real nats-server)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from nats.aio.client import Client

from schemas.config import Config, decode_config
from schemas.wire import DispatchRequest, ReplyResponse, Route, encoder, reply_decoder
from services.common import bus
from services.dispatcher.app import DispatcherWorker
from services.dispatcher.lora_state import LoraState
from services.dispatcher.lora_sync import LoraSync
from tests.processes import Service, free_port

pytestmark = pytest.mark.integration

BASE = "llama2-7b"
StartMock = Callable[..., str]


def _adapter_dir(root: Path, name: str) -> str:
    path = root / name
    path.mkdir(exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    return str(path)


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[StartMock]:
    """`start_mock(*flags, runtime_lora=True) -> URL`: a mock vLLM serving `llama2-7b`."""
    services: list[Service] = []

    def start(*flags: str, runtime_lora: bool = True) -> str:
        port = free_port()
        service = Service(
            ["mock-vllm", "--port", str(port), "--model", BASE, *flags],
            tmp_path / f"mock-{port}.log",
            health_url=f"http://127.0.0.1:{port}/health",
            env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1" if runtime_lora else ""},
        )
        services.append(service.start())
        return f"http://127.0.0.1:{port}"

    yield start
    for service in services:
        service.stop()


def _config(
    repo_root: Path,
    urls: list[str],
    loras: list[dict[str, str]],
    **affinity: Any,
) -> Config:
    data = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data["vllm_endpoints"] = [
        {"name": f"vllm-{i}", "address": "127.0.0.1", "port": int(url.rsplit(":", 1)[1])}
        for i, url in enumerate(urls)
    ]
    data["model_config"][BASE]["preferred_endpoints"] = []
    data["model_config"][BASE]["loras"] = loras
    data["categories"] = []
    data["default_model"] = BASE
    data["nats"] = {"subject_prefix": f"t{uuid.uuid4().hex[:10]}"}
    data["dispatcher"] = {"lora_affinity": affinity}
    return decode_config(data)


def _listed(url: str) -> list[str]:
    cards = httpx.get(url + "/v1/models").json()["data"]
    return [c["id"] for c in cards if c["parent"]]


async def test_an_adapter_nobody_serves_is_loaded_once_and_unloaded_when_dropped(
    repo_root: Path, tmp_path: Path, start_mock: StartMock
) -> None:
    technical = _adapter_dir(tmp_path, "technical")
    medical = _adapter_dir(tmp_path, "medical")
    # A slow load (the disk read) makes two dispatcher replicas race for the same load.
    urls = [start_mock("--lora-modules", f"technical-lora={technical}", "--lora-load-ms", "300")
            for _ in range(2)]  # fmt: skip
    loras = [{"name": "technical-lora"}, {"name": "medical-lora", "path": medical}]
    config = _config(repo_root, urls, loras)
    replicas = [LoraSync(LoraState(), config) for _ in range(2)]
    try:
        first, second = await asyncio.gather(*(r.apply(config) for r in replicas))
        # Both pick the same endpoint; the one that came second got vLLM's 400 "already loaded".
        assert first.loaded == second.loaded and len(first.loaded) == 1
        assert first.failed == second.failed == []
        (adapter, endpoint), index = first.loaded[0], int(first.loaded[0][1][-1])
        assert adapter == "medical-lora"
        assert _listed(urls[index]) == ["technical-lora", "medical-lora"]
        assert _listed(urls[1 - index]) == ["technical-lora"]
        again = await replicas[0].apply(config)  # served now: nothing to do
        assert (again.loaded, again.unloaded, again.failed) == ([], [], [])

        # The config drops both: the loaded one is unloaded, the server's own one stays.
        dropped = _config(repo_root, urls, [{"name": "legal-lora"}])
        done = await replicas[0].apply(dropped)
        assert done.unloaded == [("medical-lora", endpoint)] and done.failed == []
        assert _listed(urls[index]) == ["technical-lora"]
        assert _listed(urls[1 - index]) == ["technical-lora"]
        assert (await replicas[0].apply(dropped)).unloaded == []
    finally:
        for replica in replicas:
            await replica.close()


async def test_load_failures_are_reported_with_vllms_reason_and_retried(
    repo_root: Path, tmp_path: Path, start_mock: StartMock
) -> None:
    off = start_mock(runtime_lora=False)
    sync = LoraSync(LoraState(), _config(repo_root, [off], []))
    try:
        config = _config(repo_root, [off], [{"name": "medical-lora", "path": str(tmp_path)}])
        done = await sync.apply(config)
        ((adapter, endpoint, message),) = done.failed
        assert (adapter, endpoint) == ("medical-lora", "vllm-0")
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in message
        # A path with no adapter: vLLM's own 404 message.
        on = start_mock()
        config = _config(repo_root, [on], [{"name": "medical-lora", "path": str(tmp_path)}])
        ((_, _, message),) = (await sync.apply(config)).failed
        assert "404 Loading lora medical-lora failed: No adapter found" in message
        _adapter_dir(tmp_path, "medical")  # fixed on disk: the next round loads it
        fixed = _config(
            repo_root, [on], [{"name": "medical-lora", "path": str(tmp_path / "medical")}]
        )
        assert (await sync.apply(fixed)).loaded == [("medical-lora", "vllm-0")]
    finally:
        await sync.close()


async def test_an_unreachable_endpoint_is_unknown_not_fatal(
    repo_root: Path, tmp_path: Path, start_mock: StartMock
) -> None:
    medical = _adapter_dir(tmp_path, "medical")
    up = start_mock()
    dead = f"http://127.0.0.1:{free_port()}"
    config = _config(repo_root, [dead, up], [{"name": "medical-lora", "path": medical}])
    state = LoraState()
    sync = LoraSync(state, config)
    try:
        done = await sync.apply(config)
        assert done.loaded == [("medical-lora", "vllm-1")]  # the one that answered
        assert state.view("vllm-0").listed is None
        assert state.view("vllm-1").listed == frozenset({"medical-lora"})
    finally:
        await sync.close()


async def _swaps(url: str) -> int:
    async with httpx.AsyncClient() as client:
        swaps: int = (await client.get(url + "/mock/lora")).json()["swaps"]
        return swaps


async def _alternate(worker: DispatcherWorker, client: Client, rounds: int) -> None:
    """`rounds` x (technical-lora, medical-lora), one request at a time."""
    endpoints = [e.name for e in worker.config.vllm_endpoints]
    for i in range(rounds * 2):
        model = ("technical-lora", "medical-lora")[i % 2]
        body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
        route = Route(model=model, base_model=BASE, reason="passthrough", endpoints=endpoints)
        request = DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(body)))
        meta = bus.RequestMeta(request_id=f"r{i}", deadline_ms=bus.deadline_after(30))
        msg = await client.request(
            worker.dispatch_subjects[0], encoder.encode(request), timeout=30,
            headers=meta.to_headers(),
        )  # fmt: skip
        reply = reply_decoder.decode(msg.data)
        assert isinstance(reply, ReplyResponse) and reply.status == 200


@pytest.mark.parametrize("affinity", [True, False], ids=["affinity", "weight-only"])
async def test_affinity_keeps_each_adapter_in_a_slot(
    repo_root: Path,
    tmp_path: Path,
    start_mock: StartMock,
    nats_url: str,
    client: Client,
    affinity: bool,
) -> None:
    flags = ("--lora-modules", "technical-lora=/t", "medical-lora=/m", "--max-loras", "1",
             "--lora-swap-ms", "20")  # fmt: skip
    urls = [start_mock(*flags) for _ in range(2)]
    loras = [{"name": "technical-lora"}, {"name": "medical-lora"}]
    config = _config(repo_root, urls, loras, enabled=affinity, poll_interval_s=0.2)
    worker = DispatcherWorker(config, nats_url, name="affinity-test")
    await worker.start()
    try:
        await _alternate(worker, client, rounds=15)
    finally:
        await worker.stop(5)
    swaps = sum([await _swaps(url) for url in urls])
    if affinity:
        assert swaps == 2  # each adapter swapped into one server's only slot, once
    else:
        # By weight alone each request lands on either server, and about half of them find
        # the other adapter in the slot (30 requests: 2 swaps or fewer has odds below 1e-6).
        assert swaps > 2
