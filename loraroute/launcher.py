"""`loraroute up`: the whole system on one machine, each part a child process.

Starts, in order, an embedded nats-server (JetStream on, data under `--data-dir`), the mock vLLM
on every configured endpoint (by default when every endpoint is on loopback, as in the shipped
config), `--classifiers` classifiers, `--dispatchers` dispatchers, `--jobs` jobs workers and
`--ingresses` ingress processes (one of each by default; several ingresses share the port through
SO_REUSEPORT); waits for them to be ready and prints each with its pid. Ctrl-C or SIGTERM stops
the children in reverse order (SIGTERM to each pid, then SIGKILL after a timeout) and exits 0.

A child that exits on its own is restarted after a backoff (`RestartPolicy`: 0.5 s doubling to
30 s, back to 0.5 s once it has run 30 s); one that exits 5 times within 60 s makes the launcher
stop everything and exit 1, as does the death of the embedded nats-server.

With `--nats-cluster N` it starts an N-node JetStream cluster on loopback instead of one server
(`_start_nats`), gives every service the nodes' URLs as one comma-separated list, and runs the
services on a copy of the config in the data directory whose `jobs.replicas` is min(N, 3) when the
config leaves it at 1, so the job streams and buckets survive the loss of a node.

The config file is the first revision of the live config: once NATS is up, `up` pushes it to
the KV bucket `<prefix>_config` (nothing is stored when the bucket already holds this very text),
so `loraroute config push` changes the running system later without a restart. `--endpoint
NAME=HOST:PORT` points a configured endpoint elsewhere (e.g. a file written for another
network, run against the local mock vLLM); the services then run on a copy of the config in the
data directory. The config's warnings are printed once, here, and the children are told not to
repeat them.

The embedded server (every node of a cluster) runs with authentication on (`_nats_security`):
fresh random credentials per service kind for every run, each kind limited to the subjects it
needs (`loraroute.natsauth`), each child given only its own kind's through its environment, the
whole set (with `admin`) in the 0600 file `<data-dir>/nats-credentials.json`. With
`--nats-tls-cert/--nats-tls-key` its client port speaks TLS only, and the services verify it with
`--nats-tls-ca`.

Refuses to start, with the fix in the message, when the config is invalid, the classifier model
directory is missing, or a port it needs is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import nats.errors
import yaml

from loraroute import natsauth
from loraroute.config_push import push_text
from loraroute.natsauth import Credentials, ServerTls
from loraroute.natsserver import (
    DEFAULT_MAX_PAYLOAD,
    NatsCluster,
    NatsServer,
    NatsServerError,
    die_with_parent,
)
from schemas.config import Config, ConfigError, load_config
from services.common.log import configure
from services.common.settings import Settings
from services.common.subjects import Subjects

__all__ = ["LaunchError", "RestartPolicy", "main", "mock_plan", "nats_max_payload", "supervise"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: The NATS messages carrying a body also carry the route (system prompt included) and headers.
_PAYLOAD_HEADROOM = 64 * 1024
#: nats-server warns above 8 MiB: larger messages hurt every client sharing the connection.
_PAYLOAD_CEILING = 8 * 1024 * 1024
#: The most processes of one kind `up` starts: more than the cores only adds contention.
MAX_REPLICAS = 16


class LaunchError(Exception):
    """Something the user must fix before `loraroute up` can run; the message says what."""


def nats_max_payload(max_body_bytes: int) -> int:
    """The embedded server's `max_payload`: room for the largest accepted body plus the envelope,
    at least the server default (1 MiB), at most 8 MiB. The ingress lowers its own body limit to
    what this leaves, so the two always agree."""
    return max(DEFAULT_MAX_PAYLOAD, min(_PAYLOAD_CEILING, max_body_bytes + _PAYLOAD_HEADROOM))


def mock_plan(config: Config) -> list[tuple[str, str, int, str, list[str]]]:
    """One mock vLLM per endpoint: `(endpoint name, address, port, base model, adapters)`.

    An endpoint serves the base models whose `preferred_endpoints` name it (or that name none);
    the mock serves one base model, so the first such model is used and others are ignored.
    """
    plan = []
    for endpoint in config.vllm_endpoints:
        bases = [
            name
            for name, model in config.model_config.items()
            if not model.preferred_endpoints or endpoint.name in model.preferred_endpoints
        ]
        if not bases:
            continue
        adapters = [lora.name for lora in config.model_config[bases[0]].loras]
        plan.append((endpoint.name, endpoint.address, endpoint.port, bases[0], adapters))
    return plan


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port held only by TIME_WAIT sockets is usable (servers set it too).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class RestartPolicy:
    """When to restart a child that exited on its own, and when to give up on it.

    `crashed()` returns the delay before the next start: `first_delay_s` doubling per crash up
    to `max_delay_s`, back to `first_delay_s` when the child had run `healthy_after_s` before
    crashing. It returns None (give up) on the `max_crashes`-th crash within `window_s`.
    `clock` is injectable for tests.
    """

    def __init__(
        self,
        *,
        first_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        healthy_after_s: float = 30.0,
        max_crashes: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.healthy_after_s = healthy_after_s
        self.max_crashes = max_crashes
        self.window_s = window_s
        self._clock = clock
        self._delay = first_delay_s
        self._started = clock()
        self._crashes: list[float] = []

    def started(self) -> None:
        """The child was (re)started now."""
        self._started = self._clock()

    def crashed(self) -> float | None:
        """The child exited on its own now: seconds to wait before restarting it, or None."""
        now = self._clock()
        if now - self._started >= self.healthy_after_s:
            self._delay = self.first_delay_s
        self._crashes = [t for t in self._crashes if now - t < self.window_s] + [now]
        if len(self._crashes) >= self.max_crashes:
            return None
        delay, self._delay = self._delay, min(self._delay * 2, self.max_delay_s)
        return delay


class _Child:
    """One service process; its output goes to the launcher's own stdout/stderr. `restart`
    starts a fresh process with the same arguments after the previous one exited."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.policy = RestartPolicy()
        #: When the exited process is to be started again (monotonic clock); None while running.
        self.restart_at: float | None = None
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "loraroute", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            # A session of its own: Ctrl-C reaches only the launcher, which then stops the
            # children in order instead of all of them dying at once under each other.
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )

    def restart(self) -> None:
        self.restart_at = None
        self.process = self._spawn()
        self.policy.started()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float) -> int:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        return self.process.returncode


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def supervise(children: Sequence[_Child], now: float) -> None:
    """One pass at monotonic time `now`: schedule a restart for each child that exited, start
    those whose backoff is over. Raises `LaunchError` when a child exited too often."""
    for child in children:
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart()
                print(f"loraroute up: restarted {child.name} (pid {child.pid})", flush=True)
            continue
        code = child.process.poll()
        if code is None:
            continue
        delay = child.policy.crashed()
        if delay is None:
            raise LaunchError(
                f"{child.name} (pid {child.pid}) exited with status {code}, its "
                f"{child.policy.max_crashes}th exit within {child.policy.window_s:.0f} s; "
                "giving up and stopping the rest"
            )
        child.restart_at = now + delay
        print(
            f"loraroute up: {child.name} (pid {child.pid}) exited with status {code}; "
            f"restarting it in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )


def _wait_until(
    check: Callable[[], bool], children: Sequence[_Child], timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise LaunchError(
                    f"{child.name} (pid {child.pid}) exited with status "
                    f"{child.process.returncode} while waiting for {what}; see its log above"
                )
        if check():
            return
        time.sleep(0.2)
    raise LaunchError(f"{what} not ready after {timeout_s:.0f} s; see the logs above")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraroute up", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=os.environ.get("LORAROUTE_CONFIG", "config/config.yaml")
    )
    parser.add_argument(
        "--mock-vllm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the mock vLLM on each endpoint's port (default: on when every endpoint is "
        "on loopback)",
    )
    parser.add_argument(
        "--mock-echo",
        action="store_true",
        help="mock vLLM answers with the request it received (shows routing at work)",
    )
    for kind, what in (
        ("classifiers", "classifier"),
        ("dispatchers", "dispatcher"),
        ("jobs", "jobs worker"),
        ("ingresses", "ingress"),
    ):
        parser.add_argument(
            f"--{kind}",
            type=_replicas,
            default=1,
            metavar="N",
            help=f"{what} processes to run (default 1, at most {MAX_REPLICAS})",
        )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve each classifier, dispatcher and jobs worker's Prometheus metrics on "
        "127.0.0.1, on PORT, PORT+1, ... in the order they start (default: none; the ingress "
        "serves /metrics on its own port)",
    )
    nats = parser.add_mutually_exclusive_group()
    nats.add_argument(
        "--nats",
        help="use this NATS server (or comma-separated cluster nodes) instead of starting one",
    )
    nats.add_argument(
        "--nats-cluster",
        type=int,
        metavar="N",
        help="start an N-node JetStream cluster on loopback instead of one server (job streams "
        "at min(N, 3) replicas)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        type=_endpoint,
        metavar="NAME=HOST:PORT",
        help="run with vllm_endpoints' NAME at HOST:PORT instead of the file's address (repeat "
        "for several); e.g. an example config's endpoint pointed at the local mock vLLM",
    )
    parser.add_argument(
        "--nats-tls-cert",
        type=Path,
        metavar="FILE",
        help="the embedded server's TLS certificate (PEM): clients must then use TLS",
    )
    parser.add_argument("--nats-tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--nats-tls-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle (PEM) the services verify the NATS server with (env LORAROUTE_NATS_TLS_CA)",
    )
    parser.add_argument("--data-dir", default="var", help="JetStream data and logs (default var)")
    parser.add_argument("--host", help="ingress address (default: ingress.host)")
    parser.add_argument("--port", type=int, help="ingress port (default: ingress.port)")
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for each service"
    )
    parser.add_argument("--stop-timeout", type=float, default=15.0, help="seconds per child")
    return parser


def _endpoint(text: str) -> tuple[str, str, int]:
    name, sep, where = text.partition("=")
    host, colon, port = where.rpartition(":")
    if not sep or not name or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=HOST:PORT")
    return name, host, int(port)


def _with_endpoints(
    config_path: str, overrides: Sequence[tuple[str, str, int]], data_dir: Path
) -> str:
    """`config_path` itself without `overrides`, else a copy in `data_dir` whose endpoints
    named in them have their address and port replaced. Raises `LaunchError` for a name the
    config does not have."""
    if not overrides:
        return config_path
    data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    endpoints = {e.get("name"): e for e in data.get("vllm_endpoints") or [] if isinstance(e, dict)}
    for name, host, port in overrides:
        if name not in endpoints:
            raise LaunchError(
                f"--endpoint {name}=...: the config has no endpoint {name!r} "
                f"(it has: {', '.join(map(str, endpoints)) or 'none'})"
            )
        endpoints[name]["address"], endpoints[name]["port"] = host, port
    copy = data_dir / "config-endpoints.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(f"--endpoint {n}={h}:{p}" for n, h, p in overrides)
    copy.write_text(
        f"# Written by `loraroute up {shown}` from {config_path}; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return str(copy)


def _push_first_revision(
    nats_url: str, config_path: str, config: Config, options: dict[str, Any]
) -> None:
    """Store the config the services run as the live config's revision (see the module
    docstring), connecting with `options` (the admin user's credentials on the embedded
    server); a NATS without JetStream only costs the live config, with a warning."""
    text = Path(config_path).read_text(encoding="utf-8")
    try:
        pushed = asyncio.run(push_text(nats_url, text, config, options))
    except (OSError, TimeoutError, nats.errors.Error) as error:
        print(
            f"loraroute up: warning: the live config could not be stored ({error!r}); the "
            "services run on the file and `loraroute config push` will not reach them",
            file=sys.stderr,
            flush=True,
        )
        return
    what = "already stored" if pushed.unchanged else "stored"
    print(f"ready  live config    revision {pushed.revision} ({what})", flush=True)


def _replicas(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= count <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"{count} is not between 1 and {MAX_REPLICAS}")
    return count


def _cluster_config(config_path: str, config: Config, data_dir: Path, nodes: int) -> str:
    """The config the services run with on an N-node cluster: `config_path` itself when it
    already sets `jobs.replicas`, else a copy in `data_dir` with `jobs.replicas: min(N, 3)`."""
    if config.jobs.replicas > 1 or nodes < 2:
        return config_path
    data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    data.setdefault("jobs", {})["replicas"] = min(nodes, 3)
    copy = data_dir / "config-cluster.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(
        f"# Written by `loraroute up --nats-cluster {nodes}` from {config_path}; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return str(copy)


#: The credential variables of `services.common.settings`; `up` replaces them for its own server.
_CREDENTIAL_VARIABLES = (
    "LORAROUTE_NATS_TOKEN",
    "LORAROUTE_NATS_USER",
    "LORAROUTE_NATS_PASSWORD",
    "LORAROUTE_NATS_CREDS",
    "LORAROUTE_NATS_NKEY",
)
#: How long after its deadline a reply to a request is still allowed (an expiry answered late).
_RESPONSE_GRACE_S = 10.0


class _NatsSecurity:
    """The embedded server's users (one per kind, random each run) and TLS, and the config
    lines that make the server enforce them."""

    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        if (args.nats_tls_cert is None) != (args.nats_tls_key is None):
            raise LaunchError("--nats-tls-cert and --nats-tls-key go together")
        self.tls = (
            None
            if args.nats_tls_cert is None
            else ServerTls(args.nats_tls_cert.resolve(), args.nats_tls_key.resolve())
        )
        self.users = Credentials.generate()
        self.routes = Credentials.generate(("route",))["route"]
        # The longest a request may wait for its answer: a chat request, a classification call,
        # a job line; a classifier may answer that long after receiving it.
        longest = max(
            config.ingress.request_timeout_s,
            config.ingress.classify_timeout_s,
            config.jobs.line_timeout_s,
        )
        self.server_config = natsauth.server_config(
            self.users,
            Subjects(config.nats.subject_prefix),
            responses_expire_s=longest + _RESPONSE_GRACE_S,
            tls=self.tls,
        )


def _start_nats(
    args: argparse.Namespace,
    config: Config,
    servers: list[NatsServer],
    security: _NatsSecurity,
) -> tuple[str, str]:
    """Start what `--nats` / `--nats-cluster` ask for (one embedded server by default), with
    `security`'s users and TLS; return the URL, or comma-separated URLs, and the config path
    the services get.

    Each server (every node of a cluster) is appended to `servers` before it starts, so the
    caller stops it even when starting fails; the launcher stops everything when one exits."""
    data_dir = Path(args.data_dir)
    max_payload = nats_max_payload(config.ingress.max_body_bytes)
    if args.nats_cluster is None:
        server = NatsServer(
            store_dir=data_dir / "nats",
            max_payload=max_payload,
            extra_config=security.server_config,
        )
        servers.append(server)
        url = server.start()
        print(f"ready  nats-server    {url}  (pid {server.pid})", flush=True)
        return url, args.config
    if args.nats_cluster < 1:
        raise LaunchError("--nats-cluster needs at least 1 node")
    cluster = NatsCluster(
        data_dir / "nats-cluster",
        nodes=args.nats_cluster,
        max_payload=max_payload,
        extra_config=security.server_config,
        route_auth=(security.routes.user, security.routes.password),
    )
    servers.extend(cluster.servers)
    cluster.start()
    for node in cluster.servers:
        print(f"ready  nats-server    {node.url}  (pid {node.pid})", flush=True)
    return cluster.url, _cluster_config(args.config, config, data_dir, args.nats_cluster)


def _check_model(config: Config) -> None:
    model_dir = Path(config.classifier.category_model.model_id)
    if not model_dir.is_dir():
        raise LaunchError(
            f"the classifier model directory {model_dir} does not exist; build it with "
            "`make model` (or `loraroute model build`) from the repository root"
        )


def main(argv: list[str]) -> int:
    """Run everything until Ctrl-C/SIGTERM (exit 0), a child exits too often or nats-server
    exits (exit 1)."""
    args = _parser().parse_args(argv)
    configure("up", "warning")  # the launcher's own NATS client (the live config's push)
    try:
        args.config = _with_endpoints(args.config, args.endpoint, Path(args.data_dir))
        config, warnings = load_config(args.config)
    except (ConfigError, OSError, LaunchError) as error:
        print(f"loraroute up: {error}", file=sys.stderr)
        return 1
    for warning in warnings:  # once here; the children are told not to repeat them
        print(f"loraroute up: warning: {warning}", file=sys.stderr, flush=True)

    host = args.host or config.ingress.host
    port = args.port or config.ingress.port
    admin = config.ingress.admin
    admin_address = None if admin.port is None else (admin.host or host, admin.port)
    use_mock = args.mock_vllm
    if use_mock is None:
        use_mock = all(e.address in _LOOPBACK for e in config.vllm_endpoints)
    plan = mock_plan(config) if use_mock else []
    workers = [
        (kind, index, count)
        for kind, count in (
            ("classifier", args.classifiers),
            ("dispatcher", args.dispatchers),
            ("jobs", args.jobs),
        )
        for index in range(1, count + 1)
    ]
    metrics_ports = (
        [] if args.metrics_port is None else [args.metrics_port + i for i in range(len(workers))]
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    servers: list[NatsServer] = []
    children: list[_Child] = []
    status = 0
    try:
        _check_model(config)
        wanted = [("ingress", host, port)] + [(f"mock vLLM {n}", a, p) for n, a, p, _, _ in plan]
        if admin_address is not None:
            wanted.append(("ingress admin address", *admin_address))
        wanted += [("metrics", "127.0.0.1", p) for p in metrics_ports]
        for what, address, wanted_port in wanted:
            if not _port_free(address, wanted_port):
                raise LaunchError(
                    f"port {address}:{wanted_port} for the {what} is taken; stop what uses it "
                    "or choose another port"
                )

        env = dict(os.environ)
        users: dict[str, Credentials] = {}
        if args.nats_tls_ca is not None:
            env["LORAROUTE_NATS_TLS_CA"] = str(args.nats_tls_ca.resolve())
        if args.nats is not None:
            # An existing server: the services connect with the credentials of this environment.
            if args.nats_tls_cert is not None or args.nats_tls_key is not None:
                raise LaunchError(
                    "--nats-tls-cert and --nats-tls-key configure the embedded server; "
                    "with --nats, give the services the server's CA with --nats-tls-ca"
                )
            nats_url, config_path = str(args.nats), args.config
        else:
            security = _NatsSecurity(args, config)
            nats_url, config_path = _start_nats(args, config, servers, security)
            users = security.users
            for name in _CREDENTIAL_VARIABLES:
                env.pop(name, None)
            credentials_file = natsauth.write_credentials(
                Path(args.data_dir) / "nats-credentials.json", nats_url, users
            )
            print(f"       NATS users and passwords: {credentials_file} (owner only)", flush=True)
        env |= {"LORAROUTE_NATS_URL": nats_url, "LORAROUTE_CONFIG": config_path}

        def kind_env(kind: str) -> dict[str, str]:
            return env | natsauth.env(users.get(kind))

        _push_first_revision(
            nats_url,
            config_path,
            load_config(config_path)[0],
            Settings.from_env(env | natsauth.env(users.get("admin"))).nats_options(),
        )

        for name, address, mock_port, base, adapters in plan:
            mock_args = ["mock-vllm", "--host", address, "--port", str(mock_port), "--model", base]
            if adapters:
                mock_args += ["--lora-modules", *(f"{a}={a}" for a in adapters)]
            if args.mock_echo:
                mock_args.append("--echo")
            child = _Child(f"mock vLLM {name}", mock_args, env)
            children.append(child)
            _wait_until(
                _http_ok(f"http://{address}:{mock_port}/health"),
                children,
                args.ready_timeout,
                child.name,
            )
            print(
                f"ready  mock vLLM      http://{address}:{mock_port}  {base} + "
                f"{', '.join(adapters) or 'no adapters'}  (pid {child.pid})",
                flush=True,
            )

        common = ["--nats", nats_url, "--config", config_path, "--no-config-warnings"]
        services: list[tuple[_Child, str]] = []
        for (kind, index, count), metrics_port in zip(
            workers, metrics_ports or [None] * len(workers), strict=True
        ):
            extra = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
            name = kind if count == 1 else f"{kind}-{index}"
            where = "" if metrics_port is None else f"metrics http://127.0.0.1:{metrics_port}  "
            services.append((_Child(name, [kind, *common, *extra], kind_env(kind)), where))
        ingress_args = ["ingress", *common, "--host", host, "--port", str(port)]
        if args.ingresses > 1:
            ingress_args.append("--reuse-port")
        for index in range(1, args.ingresses + 1):
            name = "ingress" if args.ingresses == 1 else f"ingress-{index}"
            services.append((_Child(name, ingress_args, kind_env("ingress")), ""))
        children += [child for child, _ in services]
        base_url = f"http://{host}:{port}"
        # `/ready` is on the admin address when the config gives one (`ingress.admin`).
        admin_url = base_url if admin_address is None else "http://{}:{}".format(*admin_address)
        # With several ingresses these answer from whichever replica the kernel picks; one that
        # is not listening yet gets no connections, so none is refused meanwhile.
        _wait_until(_http_ok(f"{base_url}/health"), children, args.ready_timeout, "the ingress")
        _wait_until(
            _http_ok(f"{admin_url}/ready"),
            children,
            args.ready_timeout,
            "classifier and dispatcher",
        )
        for child, where in services:
            if child.name.startswith("ingress") and admin_address is not None:
                where = f"/ready and /metrics on {admin_url}  "
            print(f"ready  {child.name:<14} {where}(pid {child.pid})", flush=True)
        keys_on = config.ingress.auth.keys_file is not None or env.get("LORAROUTE_API_KEYS")
        key_header = ' -H "authorization: Bearer $KEY"' if keys_on else ""
        print(
            f"\nloraroute is up on {base_url}  (Ctrl-C stops everything)\n\n"
            f"  curl -s {base_url}/v1/chat/completions{key_header} "
            "-H 'content-type: application/json' \\\n"
            '    -d \'{"model": "MoM", "messages": [{"role": "user", '
            '"content": "Explain async/await in JavaScript"}]}\' -D - \n',
            flush=True,
        )
        while True:
            supervise(children, time.monotonic())
            for server in servers:
                if not server.running():
                    raise LaunchError(f"nats-server (pid {server.pid}) exited; stopping the rest")
            time.sleep(0.2)
    except _Stop:
        print("\nloraroute up: stopping", file=sys.stderr, flush=True)
    except (LaunchError, NatsServerError) as error:
        print(f"loraroute up: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # Further Ctrl-C during shutdown must not interrupt the stopping itself.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        for child in reversed(children):
            code = child.stop(args.stop_timeout)
            if code not in (0, -signal.SIGTERM) and status == 0 and child.restart_at is None:
                print(f"loraroute up: {child.name} stopped with status {code}", file=sys.stderr)
        for server in reversed(servers):
            server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
