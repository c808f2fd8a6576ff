"""Fixtures for the classifier tests: the built default model directories and engines on them.

`make test` builds the models first (`make model`), so a missing directory is a failure
with the command to fix it, not a skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from schemas.config import Config, decode_config
from services.classifier.engine import Engine
from services.classifier.metrics import WorkerMetrics
from services.classifier.model.weights import head_names
from services.classifier.route import Router

DOMAIN_LABELS = ("technical", "medical", "legal", "general")


def _built(repo_root: Path, head: str) -> Path:
    path = repo_root / "models" / f"loraroute-{head}"
    if not (path / "build_info.json").is_file():
        pytest.fail(
            f"{path} is not built; run `make model` (or `loraroute model build`) "
            "from the repository root first"
        )
    return path


@pytest.fixture(scope="session")
def domain_model_dir(repo_root: Path) -> Path:
    """`models/loraroute-domain`, the model the shipped config points at."""
    return _built(repo_root, "domain")


@pytest.fixture(scope="session")
def mmlu_model_dir(repo_root: Path) -> Path:
    """`models/loraroute-mmlu-pro`; skipped only when no such head is committed."""
    if "mmlu-pro" not in head_names():
        pytest.skip("no mmlu-pro head is committed under services/classifier/model/weights")
    return _built(repo_root, "mmlu-pro")


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
