"""A whole stack of real processes with any number of replicas of each service, each of which can
be stopped with SIGTERM and replaced: the ground for the drain and rolling-restart tests.

Every process runs on the given nats-server under a subject prefix of the stack's own. Workers
(classifier, dispatcher, jobs) count as ready once they log `<kind>_ready` (logged after they
subscribed); an ingress once its `/health` answers.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.processes import Service, free_port, write_stack_config

__all__ = ["SERVED", "Stack", "batch_lines", "terminate", "wait_logged"]

SERVED = {"llama2-7b", "medical-lora", "technical-lora", "legal-lora"}
QUESTIONS = [
    "What causes high blood pressure?",
    "How do I reverse a linked list in Python?",
    "What are the elements of a valid contract?",
    "What is the capital of France?",
]


def batch_lines(lines: int) -> bytes:
    """A Batch API input file of `lines` chat requests, `custom_id` `line-<i>`."""
    rows = []
    for i in range(lines):
        body = {
            "model": "MoM",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}],
        }
        rows.append(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
        )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class Stack:
    """A mock vLLM plus the services started with `start`, all stopped by `down`."""

    def __init__(
        self,
        nats_url: str,
        folder: Path,
        *,
        mock_args: tuple[str, ...] = (),
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = f"s{uuid.uuid4().hex[:8]}"
        self.mock_port = free_port()
        self.mock_args = mock_args
        self.config = write_stack_config(
            folder / "config.yaml", prefix=self.prefix, mock_port=self.mock_port, changes=changes
        )
        self.mock: Service | None = None
        self.services: list[Service] = []
        self._serial = itertools.count()

    def start_mock(self) -> None:
        args = ["mock-vllm", "--port", str(self.mock_port), "--model", "llama2-7b"]
        args += ["--lora-modules", *(f"{a}={a}" for a in sorted(SERVED - {"llama2-7b"}))]
        self.mock = Service(
            [*args, *self.mock_args],
            self.folder / "mock-vllm.log",
            health_url=f"http://127.0.0.1:{self.mock_port}/health",
        ).start()

    def start(
        self,
        kind: str,
        *extra: str,
        port: int | None = None,
        timeout_s: float = 90.0,
    ) -> Service:
        """Start one `kind` process (an ingress on `port`) with options `extra`, and wait until
        it is ready."""
        log = self.folder / f"{kind}-{next(self._serial)}.log"
        args = [kind, "--nats", self.nats_url, "--config", str(self.config), *extra]
        if kind == "ingress":
            assert port is not None
            service = Service(
                [*args, "--port", str(port)], log, health_url=f"http://127.0.0.1:{port}/health"
            )
            service.start(timeout_s)
        else:
            service = Service(args, log).start()
            wait_logged(service, f"{kind}_ready", timeout_s)
        self.services.append(service)
        return service

    def wait_ready(self, ingress_url: str, timeout_s: float = 90.0) -> None:
        """Until the ingress's `/ready` reaches a classifier and a dispatcher."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{ingress_url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout_s} s\n{self.logs()}")

    def logs(self, limit: int = 1500) -> str:
        return "\n".join(f"--- {s.log_path.name}\n{s.log_tail(limit)}" for s in self.services)

    def down(self) -> None:
        for service in reversed(self.services):
            service.stop()
        if self.mock is not None:
            self.mock.stop()


def wait_logged(service: Service, event: str, timeout_s: float) -> None:
    """Until `event` appears in the service's log; fails when the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if event in service.log_tail(100_000):
            return
        process = service.process
        if process is None or process.poll() is not None:
            raise AssertionError(f"{service.name} died:\n{service.log_tail()}")
        time.sleep(0.1)
    service.stop()
    raise AssertionError(f"{service.name}: no {event} after {timeout_s} s\n{service.log_tail()}")


def terminate(service: Service, timeout_s: float = 30.0) -> tuple[int | None, float]:
    """SIGTERM `service` and wait for it to exit: (exit status, seconds it took)."""
    started = time.monotonic()
    status = service.stop(timeout_s)
    return status, time.monotonic() - started
