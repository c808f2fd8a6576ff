"""The docs' samples that need the whole system: services started one by one as
docs/operations.md shows, then the README's curl against them (tests/test_docs.py has the rest).

The samples run as written except for addresses and paths: their well-known ports and
`config/config.yaml` become free ports and a config pointing at them, so the test cannot collide
with anything running on the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processes import REPO, Service, free_port, write_config

EXAMPLES = REPO / "docs" / "examples"


def _commands(script: Path) -> list[str]:
    """The script's command lines: continuations joined, comments and trailing `&` dropped."""
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        command = line.split("#")[0].strip().removesuffix("&").strip()
        if command:
            commands.append(" ".join(command.split()))
    return commands


def _substitute(command: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        command = command.replace(old, new)
    return command


def _wait_port(port: int, service: Service, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert service.process is not None and service.process.poll() is None, service.log_tail()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}:\n{service.log_tail()}")


def test_services_one_by_one_then_the_readme_curl(tmp_path: Path) -> None:
    nats_port, mock_port, ingress_port = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path / "config.yaml",
        {
            "vllm_endpoints": [
                {"name": "vllm-primary", "address": "127.0.0.1", "port": mock_port, "weight": 1}
            ]
        },
    )
    names = {
        "4222": str(nats_port),
        "8000": str(mock_port),
        "8080": str(ingress_port),
        "var/nats": str(tmp_path / "nats"),
        "config/config.yaml": str(config),
    }
    commands = _commands(EXAMPLES / "one-by-one.sh")
    assert [c.split()[:2] for c in commands] == [
        ["nats-server", "-js"],
        ["loraroute", "mock-vllm"],
        ["loraroute", "classifier"],
        ["loraroute", "dispatcher"],
        ["loraroute", "jobs"],
        ["loraroute", "ingress"],
    ]
    services: list[Service] = []
    try:
        for i, command in enumerate(commands):
            service = Service.shell(_substitute(command, names), tmp_path / f"{i}.log")
            services.append(service.start())
            if i == 0:
                _wait_port(nats_port, service)
            if i == 1:
                _wait_port(mock_port, service)
        ready = f"http://127.0.0.1:{ingress_port}/ready"
        deadline = time.monotonic() + 90
        status = None
        while status != 200:
            assert time.monotonic() < deadline, [s.log_tail(800) for s in services]
            for service in services:
                assert service.process is not None and service.process.poll() is None, (
                    service.log_tail()
                )
            try:
                status = httpx.get(ready, timeout=2).status_code
            except httpx.HTTPError:
                status = None
            time.sleep(0.2)
        curl = _substitute((EXAMPLES / "chat-curl.sh").read_text(encoding="utf-8"), names)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        done = subprocess.run(
            ["bash", "-e", "-c", curl],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        head = done.stdout.lower()
        assert head.startswith("http/1.1 200"), done.stdout
        assert "x-vsr-selected-category: medical" in head
        assert "x-vsr-selected-model: medical-lora" in head
    finally:
        for service in reversed(services):
            service.stop()
