"""The conformance suite's target: the mock vLLM by default, a real vLLM when one is named.

Every test here takes the ``target`` fixture and runs once per available target:

- ``mock`` (always): ``loraroute mock-vllm`` in a subprocess on a free port, serving the same model
  and adapter names the real harness serves, with adapter directories made for the test session.
- ``vllm`` (only when ``LORAROUTE_REAL_VLLM_URL`` is set; marked ``vllm``): the real server that
  ``tests/vllm/run.sh`` started. The other ``LORAROUTE_REAL_VLLM_*`` variables describe it (see
  tests/vllm/README.md).

``make test`` therefore runs the suite against the mock, and ``make test-vllm`` (``pytest -m vllm``)
runs the very same tests against vLLM: passing both is what makes the mock faithful.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import Service, free_port

ADAPTERS = ("technical-lora", "medical-lora", "legal-lora")
MAX_MODEL_LEN = 512


@dataclass(frozen=True)
class Target:
    """A running vLLM-compatible server and what it serves."""

    kind: str
    url: str
    model: str  # the served base name
    model_path: str  # the base card's root
    adapters: dict[str, str]  # name -> path, in --lora-modules order
    max_model_len: int
    high_rank_lora: str | None  # an adapter directory with rank 16 (> --max-lora-rank 8), if any


def _lora_modules(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


def _real_target() -> Target:
    env = os.environ
    return Target(
        kind="vllm",
        url=env["LORAROUTE_REAL_VLLM_URL"].rstrip("/"),
        model=env["LORAROUTE_REAL_VLLM_MODEL"],
        model_path=env["LORAROUTE_REAL_VLLM_MODEL_PATH"],
        adapters=_lora_modules(env["LORAROUTE_REAL_VLLM_LORA_MODULES"]),
        max_model_len=int(env.get("LORAROUTE_REAL_VLLM_MAX_MODEL_LEN", MAX_MODEL_LEN)),
        high_rank_lora=env.get("LORAROUTE_REAL_VLLM_HIGH_RANK_LORA") or None,
    )


def _adapter_dir(root: Path, name: str, rank: int) -> str:
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return str(path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        params = [pytest.param("mock", id="mock")]
        if os.environ.get("LORAROUTE_REAL_VLLM_URL"):
            params.append(pytest.param("vllm", id="vllm", marks=pytest.mark.vllm))
        metafunc.parametrize("target", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "vllm":
        yield _real_target()
        return
    root = tmp_path_factory.mktemp("mock-models")
    (root / "tiny-llama").mkdir()
    adapters = {name: _adapter_dir(root, name, 8) for name in ADAPTERS}
    high_rank = _adapter_dir(root, "rank16-lora", 16)
    args = [
        "--model", str(root / "tiny-llama"), "--served-model-name", "tiny-llama",
        "--max-model-len", str(MAX_MODEL_LEN), "--max-lora-rank", "8", "--max-loras", "4",
        "--lora-modules", *(f"{name}={path}" for name, path in adapters.items()),
    ]  # fmt: skip
    port = free_port()
    server = Service(
        ["mock-vllm", "--port", str(port), *args],
        root / "mock-vllm.log",
        health_url=f"http://127.0.0.1:{port}/health",
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
    ).start()
    try:
        yield Target(
            kind="mock",
            url=f"http://127.0.0.1:{port}",
            model="tiny-llama",
            model_path=str(root / "tiny-llama"),
            adapters=adapters,
            max_model_len=MAX_MODEL_LEN,
            high_rank_lora=high_rank,
        )
    finally:
        server.stop()


@pytest.fixture
def http(target: Target) -> Iterator[httpx.Client]:
    """Raw HTTP, for status codes, headers and exact bytes."""
    with httpx.Client(base_url=target.url, timeout=60) as client:
        yield client


@pytest.fixture
def client(target: Target) -> Iterator[openai.OpenAI]:
    """The official client, as applications use it."""
    with openai.OpenAI(base_url=target.url + "/v1", api_key="EMPTY", max_retries=0) as c:
        yield c
