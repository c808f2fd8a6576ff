"""Fixtures shared by the whole suite: the repository root, the built default models, one real
nats-server per run and, for the tests that ask for it, one 3-node JetStream cluster per run.

`make test` builds the models first (`make model`), so a missing model directory is a failure
with the command to fix it, not a skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loraroute.natsserver import NatsCluster, NatsServer


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_model_dir(repo_root: Path) -> Callable[[str], Path]:
    """`models/loraroute-<head>` for a head; the test fails when that model is not built."""

    def built(head: str) -> Path:
        path = repo_root / "models" / f"loraroute-{head}"
        if not (path / "build_info.json").is_file():
            pytest.fail(
                f"{path} is not built; run `make model` (or `loraroute model build`) "
                "from the repository root first"
            )
        return path

    return built


@pytest.fixture(scope="session")
def domain_model_dir(built_model_dir: Callable[[str], Path]) -> Path:
    """`models/loraroute-domain`, the model the shipped config points at."""
    return built_model_dir("domain")


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


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A real 3-node JetStream cluster on loopback (`cluster.url`: the comma-separated list the
    services take), stopped at the end of the run. A test that stops a node must start it again
    (`start_node`) before it ends; tests sharing it must use their own subjects."""
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
