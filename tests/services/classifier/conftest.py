"""Fixtures for the classifier tests: the built mmlu-pro model directory and engines on the
default model (`domain_model_dir` is the whole suite's, in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelkit.heads import head_names
from services.classifier.engine import Engine

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
