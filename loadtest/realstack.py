"""A whole loraroute stack of real processes for the reliability scripts (`fuzz_api.py`,
`faults.py`): nats-server, mock vLLM, any number of classifiers, dispatchers, jobs workers and
ingresses, each started as `python -m loraroute <kind>` with its log in the work folder, each
of which can be killed (SIGKILL) and started again with the same arguments. Every process is
stopped by its pid in `stop()`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loraroute.natsserver import NatsServer  # noqa: E402

ADAPTERS = ("technical-lora", "medical-lora", "legal-lora")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a script's `finally` stops every process it started."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def rss_mib(pid: int) -> float | None:
    """Resident memory of `pid` in MiB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@dataclass
class Proc:
    """One `loraroute <kind>` process, restartable with the same arguments."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str]
    ready: str | None = None  # a health URL, or None for a worker (ready once its log says so)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loraroute", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, as `kill -9` would."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
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

    def tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


@dataclass
class RealStack:
    """nats-server + mock vLLM + the services, on 127.0.0.1 free ports, logs in `workdir`."""

    workdir: Path
    classifiers: int = 1
    dispatchers: int = 1
    jobs: int = 0
    ingresses: int = 1
    mock_args: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    nats: NatsServer | None = None
    procs: list[Proc] = field(default_factory=list)
    #: Processes the memory watchdog killed: (name, resident MiB, seconds since `watch`).
    runaways: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats_port = free_port()
        self.mock_port = free_port()
        self.ingress_ports = [free_port() for _ in range(self.ingresses)]
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}

    @property
    def ingress_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ingress_ports]

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}"

    def _config(self) -> Path:
        data = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        model = data["classifier"]["category_model"]
        model["model_id"] = str(REPO / model["model_id"])
        if model.get("category_mapping_path"):
            model["category_mapping_path"] = str(REPO / model["category_mapping_path"])
        data["vllm_endpoints"] = [
            {"name": "vllm-primary", "address": "127.0.0.1", "port": self.mock_port, "weight": 1}
        ]
        data.setdefault("ingress", {})["ready_timeout_s"] = 0.5
        for key, value in self.changes.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def _proc(self, name: str, args: list[str], ready: str | None = None) -> Proc:
        proc = Proc(name, args, self.workdir / f"{name}.log", self.env, ready)
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 120.0) -> None:
        self.nats = NatsServer(store_dir=self.workdir / "nats", port=self.nats_port)
        url = self.nats.start()
        config = self._config()
        mock = [
            "mock-vllm",
            "--port",
            str(self.mock_port),
            "--model",
            "llama2-7b",
            "--lora-modules",
            *(f"{name}={name}" for name in ADAPTERS),
            "--max-loras",
            str(len(ADAPTERS)),
            *self.mock_args,
        ]
        self._proc("mock-vllm", mock, f"{self.mock_url}/health")
        common = ["--nats", url, "--config", str(config)]
        for kind, count in (
            ("classifier", self.classifiers),
            ("dispatcher", self.dispatchers),
            ("jobs", self.jobs),
        ):
            for i in range(count):
                self._proc(f"{kind}-{i + 1}", [kind, *common])
        for i, port in enumerate(self.ingress_ports):
            self._proc(
                f"ingress-{i + 1}",
                ["ingress", *common, "--port", str(port)],
                f"http://127.0.0.1:{port}/ready",
            )
        for proc in self.procs:
            proc.start()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every process is up and every ingress's `/ready` says 200."""
        deadline = time.monotonic() + timeout_s
        pending = [p for p in self.procs if p.ready]
        while pending and time.monotonic() < deadline:
            for proc in list(pending):
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                try:
                    if httpx.get(proc.ready or "", timeout=2.0).status_code == 200:
                        pending.remove(proc)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"not ready after {timeout_s} s: {[p.name for p in pending]}")

    def by_name(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def exited(self) -> dict[str, int | None]:
        """The processes that are not running: name -> exit status."""
        return {
            p.name: (p.process.returncode if p.process is not None else None)
            for p in self.procs
            if not p.alive()
        }

    def rss(self) -> dict[str, float | None]:
        """Resident MiB of every process (nats-server included)."""
        out = {p.name: rss_mib(p.pid) if p.alive() else None for p in self.procs}
        if self.nats is not None and self.nats.pid is not None:
            out["nats-server"] = rss_mib(self.nats.pid)
        return out

    def watch(self, max_rss_mib: float, every_s: float = 0.25) -> threading.Event:
        """Kill -9 any process whose resident memory passes `max_rss_mib` (checked every
        `every_s`), so one runaway request cannot take the whole machine; each kill is recorded
        in `runaways`. Set the returned event to stop watching."""
        stop = threading.Event()
        started = time.monotonic()

        def loop() -> None:
            while not stop.wait(every_s):
                for proc in self.procs:
                    rss = rss_mib(proc.pid) if proc.alive() else None
                    if rss is not None and rss > max_rss_mib:
                        proc.kill()
                        self.runaways.append((proc.name, rss, time.monotonic() - started))

        threading.Thread(target=loop, daemon=True).start()
        return stop

    def restart_nats(self, down_s: float = 1.0) -> None:
        """kill -9 the nats-server, wait `down_s`, start it again on the same port."""
        assert self.nats is not None and self.nats.pid is not None
        os.kill(self.nats.pid, signal.SIGKILL)
        self.nats.stop()
        time.sleep(down_s)
        self.nats.start()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.nats is not None:
            self.nats.stop()
