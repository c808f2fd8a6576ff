"""`loraroute config check`: OK and exit 0, or every error and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.schemas.test_config import GUIDE


def _run(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loraroute", "config", "check", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_ok(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GUIDE)
    result = _run(path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK"
    assert "category reachability not checked" in result.stderr


def test_every_error_printed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        GUIDE.replace('lora_name: "medical-lora"', 'lora_name: "x-lora"').replace(
            'default_model: "llama2-7b"', 'default_model: "nope"'
        )
    )
    result = _run(path, tmp_path)
    assert result.returncode == 1
    assert "2 error(s)" in result.stderr
    assert "default_model: 'nope'" in result.stderr
    assert "categories[1].model_scores[0].lora_name: 'x-lora'" in result.stderr


def _model_dir(root: Path, labels: list[str]) -> Path:
    """A model directory in the upstream layout (only the metadata is read by the check)."""
    model = root / "models" / "category_classifier_modernbert-base_model"
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"")
    (model / "tokenizer.json").write_text("{}")
    (model / "config.json").write_text(
        json.dumps({"id2label": {str(i): name for i, name in enumerate(labels)}})
    )
    (model / "category_mapping.json").write_text(
        json.dumps({"idx_to_category": {str(i): name for i, name in enumerate(labels)}})
    )
    return model


def test_labels_from_model_directory(tmp_path: Path) -> None:
    _model_dir(tmp_path, ["technical", "medical", "general"])
    path = tmp_path / "c.yaml"
    path.write_text(GUIDE)
    result = _run(path, tmp_path)
    assert result.returncode == 1
    assert "category 'legal' is reached by no classifier label" in result.stderr


def test_every_category_reachable_is_ok(tmp_path: Path) -> None:
    _model_dir(tmp_path, ["technical", "medical", "legal", "general"])
    path = tmp_path / "c.yaml"
    path.write_text(GUIDE)
    result = _run(path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not checked" not in result.stderr


def test_broken_model_directory_is_an_error(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, ["technical", "medical", "legal", "general"])
    (model / "tokenizer.json").unlink()
    path = tmp_path / "c.yaml"
    path.write_text(GUIDE)
    result = _run(path, tmp_path)
    assert result.returncode == 1
    assert "tokenizer.json is missing" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = _run(tmp_path / "absent.yaml", tmp_path)
    assert result.returncode == 1
    assert "cannot read" in result.stderr


UPSTREAM_EXAMPLE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "reference"
    / "upstream-lora-routing-example.yaml"
)


def test_the_upstreams_complete_example_passes_with_one_warning(tmp_path: Path) -> None:
    if not UPSTREAM_EXAMPLE.is_file():
        pytest.skip(f"{UPSTREAM_EXAMPLE} is not here (a copy of the upstream's example)")
    result = _run(UPSTREAM_EXAMPLE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{UPSTREAM_EXAMPLE}: OK"
    ignored = [line for line in result.stderr.splitlines() if "upstream semantic-router" in line]
    assert len(ignored) == 1, result.stderr
    assert "bert_model (line 24: the BERT similarity model" in ignored[0]
    assert "model_config['llama2-7b'].pii_policy (line 42: which PII types" in ignored[0]


def test_a_misspelt_key_is_still_an_error_with_its_line(tmp_path: Path) -> None:
    if not UPSTREAM_EXAMPLE.is_file():
        pytest.skip(f"{UPSTREAM_EXAMPLE} is not here (a copy of the upstream's example)")
    path = tmp_path / "c.yaml"
    path.write_text(UPSTREAM_EXAMPLE.read_text().replace("pii_policy:", "pii_polcy:"))
    result = _run(path, tmp_path)
    assert result.returncode == 1
    assert "line 42: model_config['llama2-7b'].pii_polcy: unknown key" in result.stderr


def test_the_decisions_format_is_named_with_the_docs_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "version: v0.3\n"
        "routing:\n"
        "  strategy: priority\n"
        "  decisions:\n"
        "    - name: math\n"
        "      rules: {operator: OR, conditions: [{type: domain, name: math}]}\n"
        "      modelRefs: [{model: base-model, lora_name: math-expert}]\n"
    )
    result = _run(path, tmp_path)
    assert result.returncode == 1
    assert "line 1: version: this is the upstream's later decisions format" in result.stderr
    assert "docs/config.md#upstream-decisions-format" in result.stderr
