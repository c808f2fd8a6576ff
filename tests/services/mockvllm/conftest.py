"""A factory fixture that runs ``loraroute mock-vllm`` with given flags on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import Service, free_port

StartMock = Callable[..., str]


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[StartMock]:
    """``start_mock(*flags, runtime_lora=False) -> base URL``; every server stops after the test."""
    services: list[Service] = []

    def start(*flags: str, runtime_lora: bool = False) -> str:
        port = free_port()
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1" if runtime_lora else ""}
        service = Service(
            ["mock-vllm", "--port", str(port), *flags],
            tmp_path / f"mock-{port}.log",
            health_url=f"http://127.0.0.1:{port}/health",
            env=env,
        )
        services.append(service.start())
        return f"http://127.0.0.1:{port}"

    yield start
    for service in services:
        service.stop()
