"""Fixtures for the classifier tests: the built mmlu-pro model directory and engines on the
default model (`domain_model_dir` is the whole suite's, in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from modelkit.heads import head_names
from schemas.config import Config, decode_config
from services.classifier.engine import Engine
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import Router

DOMAIN_LABELS = ("technical", "medical", "legal", "general")


@pytest.fixture(scope="session")
def mmlu_model_dir(built_model_dir: Callable[[str], Path]) -> Path:
    """`models/loraroute-mmlu-pro`; skipped only when no such head is committed."""
    if "mmlu-pro" not in head_names():
        pytest.skip("no mmlu-pro head is committed under modelkit/weights")
    return built_model_dir("mmlu-pro")


@pytest.fixture(scope="session")
def domain_engine(domain_model_dir: Path) -> Engine:
    """An engine on the default variant (`model.onnx`) of the domain model, one thread."""
    return Engine.from_model_dir(domain_model_dir, intra_op_threads=1)


@pytest.fixture(scope="session")
def domain_engine_fp32(domain_model_dir: Path) -> Engine:
    """An engine on the fp32 variant of the domain model, one thread."""
    return Engine.from_model_dir(
        domain_model_dir, onnx_file="onnx/model_fp32.onnx", intra_op_threads=1
    )


@pytest.fixture
def shipped_config(repo_root: Path) -> Config:
    """`config/config.yaml` as shipped, with a batch queue of four entries."""
    data: dict[str, Any] = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data["batching"] = {"max_batch_size": 8, "max_wait_ms": 2, "max_queue": 4}
    return decode_config(data)


@pytest.fixture
def router(shipped_config: Config) -> Router:
    """The router of the shipped config."""
    return Router(shipped_config)


@pytest.fixture
def worker_metrics() -> WorkerMetrics:
    """Worker metrics on a registry of their own."""
    return WorkerMetrics(CollectorRegistry())
