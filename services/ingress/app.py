"""Wires the ingress: Starlette app, NATS connection, the one reply subscription, shutdown.

Start-up (lifespan): connect to NATS, subscribe `<inbox>.*` once for every reply this process
will get, size the body limit to what one NATS message can carry, build the `Exchange` and the
`/v1/models` body; create the Batch API's JetStream streams and buckets when missing (a
mismatched existing one stops the start-up). Shutdown runs after uvicorn has stopped taking
requests and let in-flight ones finish (its graceful timeout): unsubscribe, then drain the
connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from schemas.config import Config
from schemas.errors import ErrorKind, error_response
from services.common import bus
from services.common.jetstream import ensure_job_resources
from services.common.log import get_logger
from services.common.settings import Settings
from services.common.subjects import Subjects
from services.ingress.batch_routes import BATCH_ROUTES, BatchApi
from services.ingress.batches import Batches
from services.ingress.exchange import Exchange, PublishError
from services.ingress.files import Files
from services.ingress.inbox import Inbox
from services.ingress.metrics import IngressMetrics
from services.ingress.models import model_list
from services.ingress.routes import ROUTES, IngressState
from services.ingress.validation import body_limit, envelope_headroom

__all__ = ["build_app"]

_log = get_logger()


def _credentials(settings: Settings | None) -> dict[str, Any]:
    """NATS credentials from the environment (token, user/password, creds file), if any."""
    return dict(settings.nats_options()) if settings is not None else {}


def _publisher(nc: Nats) -> Any:
    async def publish(subject: str, payload: bytes, reply: str, headers: Mapping[str, str]) -> None:
        try:
            await nc.publish(subject, payload, reply=reply, headers=dict(headers))
        except nats.errors.MaxPayloadError as error:
            raise PublishError(
                ErrorKind.TOO_LARGE, "The request is too large for the bus."
            ) from error
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionDrainingError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
        ) as error:
            raise PublishError(
                ErrorKind.UNAVAILABLE, "The message bus is not reachable; retry shortly."
            ) from error

    return publish


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.error("unhandled_error", path=request.url.path, error=repr(exc))
    body = error_response(ErrorKind.INTERNAL, "Internal server error")
    return Response(msgspec.json.encode(body), 500, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown route / wrong method: FastAPI's `{"detail": ...}`, as vLLM itself answers them.
    assert isinstance(exc, HTTPException)
    return Response(
        msgspec.json.encode({"detail": exc.detail}),
        exc.status_code,
        exc.headers,
        "application/json",
    )


def build_app(config: Config, nats_url: str, settings: Settings | None = None) -> Starlette:
    """The ingress ASGI app for `config`, talking to NATS at `nats_url`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        inbox: Inbox | None = None

        def bus_lost() -> None:
            if inbox is not None:
                _log.warning("requests_lost_with_the_bus", waiting=inbox.lose_all())

        def bus_restored() -> None:
            if inbox is not None:
                inbox.restored()

        nc = await bus.connect(
            nats_url,
            name="loraroute-ingress",
            on_disconnected=bus_lost,
            on_reconnected=bus_restored,
            **_credentials(settings),
        )
        js = nc.jetstream()
        subjects = Subjects(config.nats.subject_prefix)
        try:
            jobs = await ensure_job_resources(js, subjects, config.jobs)
        except Exception as error:
            _log.error("job_resources_failed", error=str(error))
            await bus.close(nc)
            raise
        inbox = Inbox(nc.new_inbox(), stall_s=config.liveness.stall_s)

        async def on_reply(msg: Msg) -> None:
            inbox.deliver(msg.subject, msg.headers, msg.data)

        subscription = await nc.subscribe(inbox.subscription, cb=on_reply)
        limit = body_limit(config.ingress.max_body_bytes, nc.max_payload, envelope_headroom(config))
        if limit < config.ingress.max_body_bytes:
            _log.info(
                "body_limit_lowered",
                configured=config.ingress.max_body_bytes,
                limit=limit,
                nats_max_payload=nc.max_payload,
            )
        metrics = IngressMetrics(
            CollectorRegistry(),
            in_flight=lambda: len(inbox),
            late_replies=lambda: inbox.dropped,
            lost=lambda: inbox.lost,
        )
        app.state.ingress = IngressState(
            config=config,
            exchange=Exchange(config, inbox, _publisher(nc)),
            models_body=model_list(config, int(time.time())),
            body_limit=limit,
            connected=lambda: nc.is_connected,
            metrics=metrics,
        )
        files = Files(jobs.files, config.jobs)
        app.state.batch_api = BatchApi(
            files=files,
            batches=Batches(js, subjects, config.jobs, jobs.batches, files),
            metrics=metrics,
        )
        _log.info("ingress_started", nats=nats_url, body_limit=limit)
        try:
            yield
        finally:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as error:
                _log.warning("nats_unsubscribe_failed", error=str(error))
            await bus.close(nc)
            _log.info("ingress_stopped", late_replies_dropped=inbox.dropped)

    return Starlette(
        routes=[*ROUTES, *BATCH_ROUTES],
        lifespan=lifespan,
        exception_handlers={Exception: _server_error, HTTPException: _http_error},
    )
