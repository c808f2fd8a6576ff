"""`loraroute ingress --nats URL --config FILE [--host H --port P]`: run the HTTP ingress alone.

Served by uvicorn with uvloop and httptools (measured in docs/benchmarks.md). SIGINT/SIGTERM (after
`--shutdown-delay` seconds of `/ready` answering 503 while everything is still served) stop
intake (the listening socket closes, idle keep-alive connections close), let in-flight requests
finish for up to `--graceful-timeout` seconds while their replies still arrive on the NATS inbox,
then unsubscribe, drain NATS and exit 0.
With `--reuse-port` several ingress processes listen on the same port (SO_REUSEPORT, Linux and
the BSDs) and the kernel spreads new connections over them; `loraroute up --ingresses N` does so.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from schemas.config import ConfigError, load_config
from services.common.log import configure, get_logger
from services.common.settings import Settings

if TYPE_CHECKING:
    import uvicorn

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
    # For measurements (loadtest/bench_ingress_server.py); the defaults are the measured best.
    parser.add_argument(
        "--http", default="httptools", choices=["httptools", "h11"], help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--loop", default="uvloop", choices=["uvloop", "asyncio"], help=argparse.SUPPRESS
    )
    return parser


def _shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, not yet listening: uvicorn listens on it
    once the app has started, so no connection is queued on a process that cannot serve yet."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        settings.nats_tls_context()  # unreadable TLS files stop the start here, with the cause
    except (ConfigError, OSError, ValueError) as error:
        print(f"loraroute ingress: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        log.warning("config_warning", issue=str(warning))

    import uvicorn

    from services.ingress.app import build_app

    host = args.host or config.ingress.host
    port = args.port or config.ingress.port
    app = build_app(config, args.nats, settings)
    server = _server(
        args.shutdown_delay,
        lambda: setattr(app.state.ingress, "draining", True),
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop=args.loop,
            http=args.http,
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
    try:
        if args.reuse_port:
            with _shared_socket(host, port) as sock:
                server.run(sockets=[sock])
        else:
            server.run()
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
