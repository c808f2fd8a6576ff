"""Fixtures shared by the whole suite: the repository root and one real nats-server per run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server (JetStream on) on a free loopback port, stopped at the end of the run."""
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """`nats://127.0.0.1:<port>` of the session's nats-server. Tests sharing it must use their
    own subjects (e.g. a unique `Subjects` prefix), since the server is not reset between tests."""
    return nats_server.url
