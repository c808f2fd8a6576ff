"""The whole pipeline as real processes: mock vLLM (echo), classifier, dispatcher, ingress.

Each `Pipeline` runs on the session's nats-server under a subject prefix of its own, so several
pipelines (different configs) share one server without hearing each other. Every process is
stopped by its pid when the module's tests are done.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.processes import Service, free_port, merge, write_config

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "loraroute-domain"


@dataclass
class Pipeline:
    ingress_url: str
    prefix: str
    mock_url: str | None
    config_path: Path
    services: list[Service] = field(default_factory=list)

    def openai(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.ingress_url}/v1", api_key="unused", max_retries=0, **options
        )

    def async_openai(self, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.ingress_url}/v1", api_key="unused", max_retries=0, **options
        )

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def start_mock(folder: Path, *extra: str, echo: bool = True) -> tuple[Service, int]:
    """A mock vLLM serving the shipped config's base model and adapters (in echo mode unless
    `echo` is false)."""
    port = free_port()
    service = Service(
        [
            "mock-vllm",
            "--port",
            str(port),
            "--model",
            "llama2-7b",
            "--lora-modules",
            "technical-lora=technical-lora",
            "medical-lora=medical-lora",
            "legal-lora=legal-lora",
            *(["--echo"] if echo else []),
            *extra,
        ],
        folder / f"mock-{port}.log",
        health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    return service, port


def start_pipeline(
    nats_url: str,
    folder: Path,
    *,
    endpoints: list[dict[str, Any]],
    changes: Mapping[str, Any] | None = None,
    workers: tuple[str, ...] = ("classifier", "dispatcher"),
    mock_url: str | None = None,
    base_model: str = "llama2-7b",
) -> Pipeline:
    """Classifier, dispatcher (as `workers` says) and ingress for a config with `endpoints`.

    `base_model` renames the shipped config's base model (a real vLLM serves its own name)."""
    if not (MODEL_DIR / "model.onnx").exists() and not (MODEL_DIR / "onnx").exists():
        pytest.fail(f"{MODEL_DIR} is not built; run `make model` (or `loraroute model build`)")
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    port = free_port()
    settings: dict[str, Any] = {
        "vllm_endpoints": endpoints,
        "model_config": {base_model: {"preferred_endpoints": [e["name"] for e in endpoints]}},
        "nats": {"subject_prefix": prefix},
        "ingress": {"port": port, "max_body_bytes": 256 * 1024, "ready_timeout_s": 0.5},
    }
    config = write_config(
        folder / f"config-{prefix}.yaml",
        merge(settings, changes or {}),
        rename={"llama2-7b": base_model},
    )
    pipeline = Pipeline(f"http://127.0.0.1:{port}", prefix, mock_url, config)
    common = ["--nats", nats_url, "--config", str(config)]
    try:
        for worker in workers:
            pipeline.services.append(
                Service([worker, *common], folder / f"{worker}-{prefix}.log").start()
            )
        ingress = Service(
            ["ingress", *common],
            folder / f"ingress-{prefix}.log",
            health_url=f"{pipeline.ingress_url}/health",
        ).start()
        pipeline.services.append(ingress)
        if {"classifier", "dispatcher"} <= set(workers):
            _wait_ready(pipeline)
    except BaseException:
        pipeline.stop()
        raise
    return pipeline


def _wait_ready(pipeline: Pipeline, timeout_s: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        for service in pipeline.services:
            if service.process is None or service.process.poll() is not None:
                raise RuntimeError(f"{service.name} died:\n{service.log_tail()}")
        try:
            response = httpx.get(f"{pipeline.ingress_url}/ready", timeout=2.0)
            last = response.text
            if response.status_code == 200:
                return
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.2)
    logs = "\n".join(f"--- {s.name}\n{s.log_tail(1500)}" for s in pipeline.services)
    raise RuntimeError(f"pipeline not ready after {timeout_s} s ({last}):\n{logs}")


@pytest.fixture(scope="module")
def e2e_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def mock(e2e_folder: Path) -> Iterator[str]:
    service, port = start_mock(e2e_folder)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


@pytest.fixture(scope="module")
def pipeline_factory(nats_url: str, e2e_folder: Path) -> Iterator[Callable[..., Pipeline]]:
    started: list[Pipeline] = []

    def factory(**kwargs: Any) -> Pipeline:
        pipeline = start_pipeline(nats_url, e2e_folder, **kwargs)
        started.append(pipeline)
        return pipeline

    try:
        yield factory
    finally:
        for pipeline in started:
            pipeline.stop()
