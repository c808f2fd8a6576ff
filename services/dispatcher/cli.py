"""`loraroute dispatcher --nats URL --config FILE`: run one dispatcher.

Serves every configured base model's dispatch subject until SIGTERM or SIGINT, then drains
(requests in flight finish) and exits 0. Exit status 2: bad config; 1: NATS unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import nats.errors
from prometheus_client import CollectorRegistry, start_http_server

from schemas.config import ConfigError, load_config
from services.common.log import configure, get_logger
from services.common.settings import Settings
from services.dispatcher.app import DispatcherWorker

__all__ = ["main"]


def _parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraroute dispatcher", description=__doc__.splitlines()[0])
    p.add_argument(
        "--nats",
        default=settings.nats_url,
        help=f"NATS URL (default {settings.nats_url}; env LORAROUTE_NATS_URL)",
    )
    p.add_argument(
        "--config", default=settings.config_path, help="config file (env LORAROUTE_CONFIG)"
    )
    p.add_argument(
        "--name", help="this dispatcher's name on the bus (default: dispatcher-<random>)"
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on --metrics-host:PORT"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to finish requests in flight at shutdown",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    return p


async def _serve(worker: DispatcherWorker, drain_timeout_s: float) -> None:
    log = get_logger()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("dispatcher_ready", name=worker.name, subjects=worker.dispatch_subjects)
    try:
        await stop.wait()
    finally:
        log.info("dispatcher_draining", name=worker.name)
        await worker.stop(drain_timeout_s)
        log.info("dispatcher_stopped", name=worker.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dispatcher; return its exit status."""
    settings = Settings.from_env()
    args = _parser(settings).parse_args(argv)
    configure("dispatcher", args.log_level)
    log = get_logger()
    try:
        config, warnings = load_config(args.config)
    except (ConfigError, OSError) as error:
        print(f"loraroute dispatcher: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        log.warning("config_warning", issue=str(warning))
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    worker = DispatcherWorker(
        config,
        args.nats,
        name=args.name,
        registry=registry,
        vllm_api_key=settings.vllm_api_key,
        nats_options=settings.nats_options(),
    )
    try:
        asyncio.run(_serve(worker, args.drain_timeout))
    except (OSError, TimeoutError, nats.errors.NoServersError) as error:
        print(f"loraroute dispatcher: cannot reach NATS at {args.nats}: {error!r}", file=sys.stderr)
        return 1
    return 0
