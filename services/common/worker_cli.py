"""The command-line shape shared by the NATS workers (`loraroute classifier`, `loraroute dispatcher`).

Both take the same options, log the same way, serve Prometheus metrics the same way, stop on
SIGTERM or SIGINT by draining (work in flight finishes), and use the same exit statuses:
0 after a clean stop, 1 when NATS cannot be reached, 2 when the config, the NATS TLS files or
the service's own start-up checks fail.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
from prometheus_client import CollectorRegistry, start_http_server

from schemas.config import Config, ConfigError, load_config
from services.common import tracing
from services.common.live_config import startup_config
from services.common.log import configure, get_logger
from services.common.settings import Settings

__all__ = ["Worker", "WorkerBuild", "WorkerOptions", "run_worker"]


class Worker(Protocol):
    """A service that connects to NATS in `start` and drains within `timeout_s` in `stop`."""

    name: str

    async def start(self) -> None: ...

    async def stop(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    """What the command line and the environment say about the worker to build."""

    nats_url: str
    name: str | None
    registry: CollectorRegistry
    settings: Settings
    config_revision: int = 0
    """The live config revision `config` is (0: the local file; `services.common.live_config`)."""


#: `build(config, options) -> Worker`: the service's own start-up (model loading, checks); it may
#: raise any of the `startup_errors` given to `run_worker`.
WorkerBuild = Callable[[Config, WorkerOptions], Worker]


def _parser(kind: str, description: str, settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"loraroute {kind}", description=description)
    p.add_argument(
        "--nats",
        default=settings.nats_url,
        help=f"NATS URL, or a cluster's nodes as comma-separated URLs (default "
        f"{settings.nats_url}; env LORAROUTE_NATS_URL)",
    )
    p.add_argument(
        "--config", default=settings.config_path, help="config file (env LORAROUTE_CONFIG)"
    )
    p.add_argument("--name", help=f"this worker's name on the bus (default: {kind}-<random>)")
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on --metrics-host:PORT"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to finish work in flight at shutdown; longer waits for slow generations, "
        "shorter frees the process sooner",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    p.add_argument(
        "--no-config-warnings",
        action="store_true",
        help="do not log the config's warnings at start (`loraroute up` prints them once itself)",
    )
    return p


async def _serve(
    kind: str,
    worker: Worker,
    drain_timeout_s: float,
    ready: Callable[[Worker], Mapping[str, Any]],
) -> None:
    log = get_logger()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info(f"{kind}_ready", name=worker.name, **ready(worker))
    try:
        await stop.wait()
    finally:
        log.info(f"{kind}_draining", name=worker.name)
        await worker.stop(drain_timeout_s)
        log.info(f"{kind}_stopped", name=worker.name)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (with `uvicorn[standard]`, on every platform
    but Windows), else None: asyncio's own. The ingress runs on uvloop too; the workers' loop
    runs every message and every call to vLLM, and costs less CPU per request on uvloop
    (docs/benchmarks.md, "The request path's CPU, trimmed")."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return None
    return uvloop.new_event_loop


def run_worker(
    kind: str,
    description: str,
    argv: Sequence[str] | None,
    build: WorkerBuild,
    *,
    ready: Callable[[Worker], Mapping[str, Any]] = lambda _: {},
    startup_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse `argv`, load the config, `build` the worker and serve it until a signal.

    Returns the exit status (see the module docstring); a `startup_errors` exception raised by
    `build` or by the worker's `start` is exit status 2. `ready(worker)` adds context to the
    `<kind>_ready` log event once the worker is subscribed.
    """
    settings = Settings.from_env()
    args = _parser(kind, description, settings).parse_args(argv)
    configure(kind, args.log_level)
    log = get_logger()
    try:
        config, warnings = load_config(args.config)
    except (ConfigError, OSError) as error:
        print(f"loraroute {kind}: {error}", file=sys.stderr)
        return 2
    config, revision, stored_issues = asyncio.run(
        startup_config(args.nats, config, settings.nats_options(), kind)
    )
    if not args.no_config_warnings:
        for issue in stored_issues if revision else [str(w) for w in warnings]:
            log.warning("config_warning", issue=issue)
    try:
        tracing.configure(config.tracing, kind)
        registry = CollectorRegistry()
        worker = build(config, WorkerOptions(args.nats, args.name, registry, settings, revision))
    except (ConfigError, OSError, ValueError, tracing.TracingUnavailable, *startup_errors) as error:  # type: ignore[misc]
        print(f"loraroute {kind}: {error}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(kind, worker, args.drain_timeout, ready))
    except (OSError, TimeoutError, nats.errors.NoServersError) as error:
        print(f"loraroute {kind}: cannot reach NATS at {args.nats}: {error!r}", file=sys.stderr)
        return 1
    except startup_errors as error:  # raised by `start` (e.g. checks against the server)
        print(f"loraroute {kind}: {error}", file=sys.stderr)
        return 2
    return 0
