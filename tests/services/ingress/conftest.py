"""Shared fixtures for the ingress tests: the shipped config, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import Config, load_config


@pytest.fixture(scope="session")
def config(repo_root: Path) -> Config:
    loaded, _ = load_config(repo_root / "config" / "config.yaml")
    return loaded
