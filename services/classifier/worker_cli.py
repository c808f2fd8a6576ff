"""`loraroute classifier --nats URL --config FILE`: run one classifier worker.

Loads the config and the model once, refuses to start when the config's categories do not fit
the model's labels, serves until SIGTERM or SIGINT, then drains (every accepted request is
answered) and exits 0. Exit status 2: bad config or model; 1: NATS unreachable.
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
from services.classifier.app import ClassifierWorker, load_engine
from services.classifier.errors import ClassifierError
from services.common.log import configure, get_logger
from services.common.settings import Settings

__all__ = ["main"]


def _parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraroute classifier", description=__doc__.splitlines()[0])
    p.add_argument(
        "--nats",
        default=settings.nats_url,
        help=f"NATS URL (default {settings.nats_url}; env LORAROUTE_NATS_URL)",
    )
    p.add_argument(
        "--config", default=settings.config_path, help="config file (env LORAROUTE_CONFIG)"
    )
    p.add_argument("--name", help="this worker's name on the bus (default: classifier-<random>)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight work at shutdown",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    return p


async def _serve(worker: ClassifierWorker, drain_timeout_s: float) -> None:
    log = get_logger()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info(
        "classifier_ready",
        name=worker.name,
        subject=worker.subjects.classify,
        labels=list(worker.engine.labels),
        max_batch_size=worker.config.batching.max_batch_size,
    )
    try:
        await stop.wait()
    finally:
        log.info("classifier_draining", name=worker.name)
        await worker.stop(drain_timeout_s)
        log.info("classifier_stopped", name=worker.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker; return its exit status."""
    settings = Settings.from_env()
    args = _parser(settings).parse_args(argv)
    configure("classifier", args.log_level)
    log = get_logger()
    try:
        config, warnings = load_config(args.config)
        for warning in warnings:
            log.warning("config_warning", issue=str(warning))
        engine = load_engine(config)
    except (ConfigError, ClassifierError, OSError) as error:
        print(f"loraroute classifier: {error}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    worker = ClassifierWorker(config, engine, args.nats, name=args.name, registry=registry)
    try:
        asyncio.run(_serve(worker, args.drain_timeout))
    except (OSError, TimeoutError, nats.errors.NoServersError) as error:
        print(f"loraroute classifier: cannot reach NATS at {args.nats}: {error!r}", file=sys.stderr)
        return 1
    return 0
