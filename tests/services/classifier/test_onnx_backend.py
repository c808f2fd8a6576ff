"""services/classifier/onnx_backend.py against the built default model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from structlog.testing import capture_logs

from services.classifier.errors import ModelDirError, ProviderError
from services.classifier.model_dir import load_model_dir
from services.classifier.onnx_backend import CPU, CUDA, OnnxBackend, softmax
from services.classifier.tokens import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(domain_model_dir: Path) -> Tokenizer:
    model = load_model_dir(domain_model_dir)
    return Tokenizer.from_file(model.tokenizer_path, model.max_length)


def test_cpu_session_predicts_distributions(domain_model_dir: Path, tokenizer: Tokenizer) -> None:
    model = load_model_dir(domain_model_dir)
    backend = OnnxBackend.from_model_dir(model, intra_op_threads=1, max_batch_size=4)
    assert backend.provider == CPU and not backend.gpu_fallback
    assert backend.labels == model.labels
    preds = backend.predict(tokenizer.encode(["hello", "what is a mutex", "x " * 40]))
    assert len(preds) == 3
    for p in preds:
        assert p.probabilities.shape == (len(model.labels),)
        assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.label == model.labels[p.index]
        assert p.confidence == pytest.approx(float(p.probabilities.max()))
    assert backend.health()
    assert backend.predict(tokenizer.encode([])) == []
    with pytest.raises(ValueError, match="exceeds max_batch_size 4"):
        backend.predict(tokenizer.encode(["a"] * 5))


def test_gpu_wanted_but_not_obtained_is_visible(domain_model_dir: Path) -> None:
    model = load_model_dir(domain_model_dir)
    with capture_logs() as logs:
        backend = OnnxBackend.from_model_dir(model, use_cpu=False, intra_op_threads=1)
    if backend.provider == CUDA:  # a machine with a working CUDA provider
        assert not backend.gpu_fallback
        return
    assert backend.provider == CPU and backend.gpu_fallback
    assert [e["event"] for e in logs] == ["classifier_gpu_unavailable"]
    reason = logs[0]["reason"]
    if CUDA not in ort.get_available_providers():
        assert "no CUDA provider" in reason
    with pytest.raises(ProviderError, match="GPU required but the session runs on CPU"):
        OnnxBackend.from_model_dir(model, use_cpu=False, require_gpu=True)


def test_label_count_must_match_the_graph(domain_model_dir: Path) -> None:
    model = load_model_dir(domain_model_dir)
    with pytest.raises(ModelDirError, match=r"has \d+ columns but the model directory names 2"):
        OnnxBackend(model.onnx_path, ["a", "b"])


def test_a_broken_onnx_file_is_a_model_dir_error(domain_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    with (domain_model_dir / "model.onnx").open("rb") as src:
        broken.write_bytes(src.read(1000))
    with pytest.raises(ModelDirError, match="onnxruntime cannot load it"):
        OnnxBackend(broken, ["a"])
    shutil.rmtree(tmp_path)


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0], [-5.0, -5.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
    assert p.dtype == np.float32


def test_idle_threads_sleep_unless_spin_wait(domain_model_dir: Path) -> None:
    model = load_model_dir(domain_model_dir)
    key = "session.intra_op.allow_spinning"
    sleeping = OnnxBackend.from_model_dir(model, intra_op_threads=1)
    assert sleeping._session.get_session_options().get_session_config_entry(key) == "0"
    spinning = OnnxBackend.from_model_dir(model, intra_op_threads=1, spin_wait=True)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        spinning._session.get_session_options().get_session_config_entry(key)  # default: spin
