"""Starting loraroute services as real child processes in tests, and always stopping them.

A `Service` runs `python -m loraroute <command> ...` with its output in a log file, waits until
an HTTP health URL answers (or the process dies, whose log tail is then shown), and stops by pid:
SIGTERM, then SIGKILL after a timeout. Fixtures call `stop()` in a finalizer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["Service", "free_port", "merge", "write_config", "write_stack_config"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a tiny race with other processes remains)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `changes` into `base` in place (nested mappings merge, other values replace)."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_config(
    path: Path, changes: Mapping[str, Any], rename: Mapping[str, str] | None = None
) -> Path:
    """Write the shipped config with `changes` merged in (nested mappings merge, others replace).

    `rename` replaces names in the shipped file's text first (e.g. its base model's name).
    Relative model paths are made absolute, so the file works from any working directory.
    """
    text = (REPO / "config" / "config.yaml").read_text(encoding="utf-8")
    for old, new in (rename or {}).items():
        text = text.replace(f'"{old}"', f'"{new}"')
    data = yaml.safe_load(text)
    model = data["classifier"]["category_model"]
    model["model_id"] = str(REPO / model["model_id"])
    if model.get("category_mapping_path"):
        model["category_mapping_path"] = str(REPO / model["category_mapping_path"])
    merge(data, changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_stack_config(
    path: Path, *, prefix: str, mock_port: int, changes: Mapping[str, Any] | None = None
) -> Path:
    """The shipped config for a stack of real processes: one vLLM endpoint on 127.0.0.1
    `mock_port`, subjects under `prefix`, a short `/ready` ping, then `changes` merged in."""
    endpoint = {"name": "vllm-primary", "address": "127.0.0.1", "port": mock_port, "weight": 1}
    base: dict[str, Any] = {
        "vllm_endpoints": [endpoint],
        "nats": {"subject_prefix": prefix},
        "ingress": {"ready_timeout_s": 0.5},
    }
    return write_config(path, merge(base, changes or {}))


class Service:
    """One `loraroute <command>` child process."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        health_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "loraroute", *args]
        self.name = args[0] if args else "service"
        self.log_path = log_path
        self.health_url = health_url
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def shell(cls, command: str, log_path: Path, *, health_url: str | None = None) -> Service:
        """A service started from a shell command line (run by bash, which `exec`s it, so the
        pid stopped is the command's own)."""
        service = cls([], log_path, health_url=health_url)
        service.args = ["bash", "-c", f"exec {command}"]
        # The project's console scripts (`loraroute`, `nats-server`) sit beside this Python.
        bin_dir = str(Path(sys.executable).parent)
        service.env["PATH"] = f"{bin_dir}{os.pathsep}{service.env.get('PATH', '')}"
        service.name = command.split()[0]
        return service

    def start(self, timeout_s: float = 30.0) -> Service:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        if self.health_url is not None:
            self.wait_healthy(timeout_s)
        return self

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float) -> None:
        assert self.process is not None and self.health_url is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.health_url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status (None if never started)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        return process.returncode
