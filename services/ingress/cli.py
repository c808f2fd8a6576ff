"""`loraroute ingress --nats URL --config FILE [--host H --port P]`: run the HTTP ingress alone.

Served by uvicorn with uvloop and httptools (measured in docs/benchmarks.md). SIGINT/SIGTERM (after
`--shutdown-delay` seconds of `/ready` answering 503 while everything is still served) stop
intake (the listening socket closes, idle keep-alive connections close), let in-flight requests
finish for up to `--graceful-timeout` seconds while their replies still arrive on the NATS inbox,
then unsubscribe, drain NATS and exit 0.
With `--reuse-port` several ingress processes listen on the same port (SO_REUSEPORT, Linux and
the BSDs) and the kernel spreads new connections over them; `loraroute up --ingresses N` does so.
With `ingress.admin.port` set, a second server in the same process serves `/ready` and
`/metrics` on that address (sharing it the same way under `--reuse-port`), from when the ingress
has started until it has stopped. Every connection gets `ingress.http`'s header deadline and
size cap (`header_guard`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from schemas.apikeys import KeysError
from schemas.config import Config, ConfigError, load_config
from services.common import tracing
from services.common.live_config import startup_config
from services.common.log import configure, get_logger
from services.common.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

__all__ = ["main"]


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraroute ingress", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nats",
        default=settings.nats_url,
        help="NATS URL, or a cluster's nodes as comma-separated URLs (env LORAROUTE_NATS_URL)",
    )
    parser.add_argument(
        "--config", default=settings.config_path, help="config file (env LORAROUTE_CONFIG)"
    )
    parser.add_argument("--host", help="listen address (default: ingress.host in the config)")
    parser.add_argument("--port", type=int, help="listen port (default: ingress.port)")
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish on shutdown (default 30)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other ingress processes (SO_REUSEPORT): the kernel spreads "
        "connections over them",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        help="seconds between SIGTERM and closing the port, while /ready answers 503 and every "
        "request is still served, so a balancer checking /ready stops sending here first "
        "(default 0)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--no-config-warnings",
        action="store_true",
        help="do not log the config's warnings at start (`loraroute up` prints them once itself)",
    )
    # For measurements (loadtest/bench_ingress_server.py); the defaults are the measured best.
    parser.add_argument(
        "--http", default="httptools", choices=["httptools", "h11"], help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--loop", default="uvloop", choices=["uvloop", "asyncio"], help=argparse.SUPPRESS
    )
    return parser


def _shared_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A socket bound to `host:port` (with SO_REUSEPORT unless `reuse_port` is False), not yet
    listening: uvicorn listens on it once the app has started, so no connection is queued on a
    process that cannot serve yet."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _server(
    delay_s: float, mark_draining: Callable[[], None], config: uvicorn.Config
) -> uvicorn.Server:
    """uvicorn's server, whose first SIGTERM/SIGINT marks the ingress draining (`/ready` 503)
    and starts the graceful stop only `delay_s` later; a second signal starts it at once."""
    import uvicorn

    class DelayedStop(uvicorn.Server):
        delayed: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if delay_s <= 0 or self.delayed is not None or not self.started:
                super().handle_exit(sig, frame)
                return
            mark_draining()
            get_logger().info("ingress_draining", shutdown_delay_s=delay_s)
            self.delayed = threading.Timer(delay_s, super().handle_exit, (sig, frame))
            self.delayed.daemon = True
            self.delayed.start()

    return DelayedStop(config)


def _admin_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server for the admin address: the public server owns the signals and tells
    this one when to stop."""
    import uvicorn

    class Follower(uvicorn.Server):
        def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
            return contextlib.nullcontext()

    return Follower(config)


async def _serve(
    server: uvicorn.Server,
    sockets: list[socket.socket] | None,
    admin: tuple[uvicorn.Server, socket.socket] | None,
) -> None:
    """Run `server`; run `admin`'s server beside it from when `server` has started until it
    has stopped."""
    if admin is None:
        await server.serve(sockets=sockets)
        return
    admin_server, admin_socket = admin

    async def follow() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        await admin_server.serve(sockets=[admin_socket])

    follower = asyncio.ensure_future(follow())
    try:
        await server.serve(sockets=sockets)
    finally:
        admin_server.should_exit = True
        if not admin_server.started:
            follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def _admin(
    config: Config,
    host: str,
    args: argparse.Namespace,
    http: type[asyncio.Protocol] | str,
    app: Starlette,
    stack: contextlib.ExitStack,
) -> tuple[uvicorn.Server, socket.socket] | None:
    """The admin address's server and its bound socket (closed with `stack`), when
    `ingress.admin.port` is set. Raises OSError, naming the address, when it cannot be bound."""
    import uvicorn

    from services.ingress.app import build_admin_app

    if config.ingress.admin.port is None:
        return None
    admin_host = config.ingress.admin.host or host
    admin_port = config.ingress.admin.port
    try:
        sock = stack.enter_context(_shared_socket(admin_host, admin_port, args.reuse_port))
    except OSError as error:
        raise OSError(f"admin address {admin_host}:{admin_port}: {error}") from error
    get_logger().info("admin_address", host=admin_host, port=admin_port)
    admin_config = uvicorn.Config(
        build_admin_app(app),
        loop=args.loop,
        http=http,
        backlog=config.ingress.http.backlog,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    return _admin_server(admin_config), sock


def _stopped(signum: int, frame: FrameType | None) -> None:
    """The signal uvicorn raises again after its graceful stop: the stop is already done."""


def main(argv: list[str]) -> int:
    """Run the ingress until SIGINT/SIGTERM; 0 on a clean stop, 1 when it cannot start."""
    settings = Settings.from_env()
    args = _parser(settings).parse_args(argv)
    configure("ingress", args.log_level)
    log = get_logger()
    try:
        config, warnings = load_config(args.config)
        tracing.configure(config.tracing, "ingress")
        settings.nats_tls_context()  # unreadable TLS files stop the start here, with the cause
    except (ConfigError, OSError, ValueError, tracing.TracingUnavailable) as error:
        print(f"loraroute ingress: {error}", file=sys.stderr)
        return 1
    # The stored live config revision, when there is one, wins over the file.
    config, revision, stored_issues = asyncio.run(
        startup_config(args.nats, config, settings.nats_options(), "ingress")
    )
    if not args.no_config_warnings:
        for issue in stored_issues if revision else [str(w) for w in warnings]:
            log.warning("config_warning", issue=issue)

    import uvicorn

    from services.ingress.app import build_app
    from services.ingress.header_guard import guarded_protocol

    host = args.host or config.ingress.host
    port = args.port or config.ingress.port
    try:
        app = build_app(config, args.nats, settings, revision)
    except (KeysError, OSError) as error:
        print(f"loraroute ingress: API keys: {error}", file=sys.stderr)
        return 1
    limits = config.ingress.http
    http: type[asyncio.Protocol] | str = (
        guarded_protocol(limits.header_timeout_s, limits.max_header_bytes)
        if args.http == "httptools"
        else "h11"  # measurements only: its size cap below, no header deadline
    )
    server = _server(
        args.shutdown_delay,
        lambda: setattr(app.state.ingress, "draining", True),
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop=args.loop,
            http=http,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            backlog=limits.backlog,
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=args.graceful_timeout,
            # Keep-alive above the usual client pool idle time (httpx: 5 s) so a pooled
            # connection is not closed under a client that is about to reuse it.
            timeout_keep_alive=15,
            # No X-Forwarded-* rewriting: the ingress never uses the client address, and the
            # middleware costs a layer on every request.
            proxy_headers=False,
        ),
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM, restores the handlers it found, then raises the
    # signal again; with these (which do nothing) in place, a clean stop exits 0 as the workers do.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    with contextlib.ExitStack() as stack:
        sockets = None
        try:
            if args.reuse_port:
                sockets = [stack.enter_context(_shared_socket(host, port))]
        except OSError as error:
            print(f"loraroute ingress: cannot listen on {host}:{port}: {error}", file=sys.stderr)
            return 1
        try:
            admin = _admin(config, host, args, http, app, stack)
        except OSError as error:
            print(f"loraroute ingress: cannot listen on the {error}", file=sys.stderr)
            return 1
        try:
            with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
                runner.run(_serve(server, sockets, admin))
        except OSError as error:
            print(f"loraroute ingress: cannot listen on {host}:{port}: {error}", file=sys.stderr)
            return 1
    if not server.started:
        print("loraroute ingress: did not start (see the log above)", file=sys.stderr)
        return 1
    log.info("ingress_exit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
