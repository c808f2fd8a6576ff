"""`loraroute up`'s plain parts and its refusals; starting everything is in tests/e2e."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loraroute.launcher import main, mock_plan, nats_max_payload
from schemas.config import load_config
from tests.processes import free_port, write_config


def test_max_payload_fits_the_body_limit_within_bounds() -> None:
    assert nats_max_payload(4 * 1024 * 1024) == 4 * 1024 * 1024 + 64 * 1024
    assert nats_max_payload(1024) == 1024 * 1024
    assert nats_max_payload(64 * 1024 * 1024) == 8 * 1024 * 1024


def test_mock_plan_serves_each_endpoints_models(repo_root: Path) -> None:
    config, _ = load_config(repo_root / "config" / "config.yaml")
    assert mock_plan(config) == [
        (
            "vllm-primary",
            "127.0.0.1",
            8000,
            "llama2-7b",
            ["technical-lora", "medical-lora", "legal-lora"],
        )
    ]


def test_refuses_without_the_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {"classifier": {"category_model": {"model_id": str(tmp_path / "missing")}}},
    )
    assert main(["--config", str(config), "--data-dir", str(tmp_path / "var")]) == 1
    assert "make model" in capsys.readouterr().err


def test_refuses_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.yaml",
            {
                "ingress": {"port": port},
                "vllm_endpoints": [
                    {"name": "vllm-primary", "address": "127.0.0.1", "port": free_port()}
                ],
            },
        )
        assert main(["--config", str(config), "--data-dir", str(tmp_path / "var")]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "taken" in err


def test_refuses_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default_model: 3\n")
    assert main(["--config", str(bad)]) == 1
    assert "loraroute up:" in capsys.readouterr().err
