"""Wires the ingress: Starlette app, NATS connection, the one reply subscription, shutdown.

`build_app` reads the API keys first (a bad keys file stops the start-up) and puts the door
(`door.Door`: keys, early 429) in front of the routes; with `ingress.admin.port` set, `/ready` and
`/metrics` leave the public app for `build_admin_app`'s, which shares its state.

Start-up (lifespan): connect to NATS, subscribe `<inbox>.*` once for every reply this process
will get, size the body limit to what one NATS message can carry, build the `Exchange` and the
`/v1/models` body; create the Batch API's JetStream streams and buckets when missing (a
mismatched existing one stops the start-up); watch the live config, whose new revisions swap
the config, the `/v1/models` body and the body limit between requests. Shutdown runs after
uvicorn has stopped taking requests and let in-flight ones finish (its graceful timeout):
unsubscribe, then drain the connection.
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
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from schemas.config import Config
from schemas.errors import ErrorKind, error_response
from services.common import bus, tracing
from services.common.jetstream import ensure_job_resources
from services.common.live_config import LiveConfig
from services.common.log import get_logger
from services.common.settings import Settings
from services.common.subjects import HEADER_REQUEST_ID, Subjects
from services.ingress.auth import load_keyring
from services.ingress.batch_routes import BATCH_ROUTES, BatchApi
from services.ingress.batches import Batches
from services.ingress.door import Door
from services.ingress.exchange import Exchange, PublishError
from services.ingress.files import Files
from services.ingress.inbox import Inbox
from services.ingress.metrics import IngressMetrics
from services.ingress.models import model_list
from services.ingress.routes import ADMIN_ROUTES, PUBLIC_ROUTES, ROUTES, IngressState
from services.ingress.validation import body_limit, envelope_headroom

__all__ = ["build_admin_app", "build_app"]

_log = get_logger()


def _credentials(settings: Settings | None) -> dict[str, Any]:
    """NATS credentials and TLS from the environment (`Settings.nats_options`), if any."""
    return dict(settings.nats_options()) if settings is not None else {}


#: What a client reads when the ingress's own connection to NATS is down.
_BUS_DOWN = "The message bus is unavailable; retry shortly."


def _publisher(nc: Nats) -> Any:
    """`Exchange`'s publish over `nc`. A request (a publish that waits for replies) is refused
    at once while the connection is down (reconnecting or closed), so the client reads that the
    bus is unavailable, not that no worker runs; nats-py would otherwise buffer it until the
    reconnect, when its workers may not yet be subscribed again. Cancels, which need no reply,
    are still buffered."""

    async def publish(subject: str, payload: bytes, reply: str, headers: Mapping[str, str]) -> None:
        if reply and not nc.is_connected:
            _log.warning("bus_down", request_id=headers.get(HEADER_REQUEST_ID), subject=subject)
            raise PublishError(ErrorKind.UNAVAILABLE, _BUS_DOWN)
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
            _log.warning("bus_down", request_id=headers.get(HEADER_REQUEST_ID), error=repr(error))
            raise PublishError(ErrorKind.UNAVAILABLE, _BUS_DOWN) from error

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


def build_app(
    config: Config, nats_url: str, settings: Settings | None = None, config_revision: int = 0
) -> Starlette:
    """The ingress ASGI app for `config` (live config revision `config_revision`; 0: a local
    file), talking to NATS at `nats_url`.

    Raises `schemas.apikeys.KeysError` or `OSError` when the API keys cannot be read."""
    keyring = load_keyring(config, settings.api_keys if settings is not None else None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        inbox: Inbox | None = None

        def bus_lost() -> None:
            if inbox is not None:
                _log.warning("requests_lost_with_the_bus", waiting=inbox.lose_all())

        def bus_restored() -> None:
            if inbox is not None:
                inbox.restored()

        subjects = Subjects(config.nats.subject_prefix)
        nc = await bus.connect(
            nats_url,
            name="loraroute-ingress",
            inbox_prefix=subjects.inbox("ingress"),
            on_disconnected=bus_lost,
            on_reconnected=bus_restored,
            **_credentials(settings),
        )
        js = nc.jetstream()
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
        created = int(time.time())
        app.state.ingress = IngressState(
            config=config,
            exchange=Exchange(config, inbox, _publisher(nc)),
            models_body=model_list(config, created),
            body_limit=limit,
            connected=lambda: nc.is_connected,
            metrics=metrics,
            models_created=created,
            config_revision=config_revision,
        )

        async def apply(new: Config, revision: int) -> None:
            # Everything derived first, then one synchronous swap: a request reads its
            # config and revision together, before or after, never half of each.
            state: IngressState = app.state.ingress
            models = model_list(new, state.models_created)
            limit = body_limit(
                config.ingress.max_body_bytes, nc.max_payload, envelope_headroom(new)
            )
            state.exchange.config = new
            state.config, state.config_revision = new, revision
            state.models_body, state.body_limit = models, limit

        live = LiveConfig(
            config,
            service="ingress",
            apply=apply,
            registry=metrics.registry,
            revision=config_revision,
        )
        await live.start(nc)
        files = Files(jobs.files, config.jobs)
        app.state.batch_api = BatchApi(
            files=files,
            batches=Batches(js, subjects, config.jobs, jobs.batches, files),
            metrics=metrics,
            default_model=config.default_model,
        )
        _log.info(
            "ingress_started",
            nats=nats_url,
            body_limit=limit,
            api_keys=keyring.names if keyring.enabled else "off",
        )
        try:
            yield
        finally:
            await live.stop()
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as error:
                _log.warning("nats_unsubscribe_failed", error=str(error))
            await bus.close(nc)
            _log.info("ingress_stopped", late_replies_dropped=inbox.dropped)

    separate_admin = config.ingress.admin.port is not None
    return Starlette(
        routes=[*(PUBLIC_ROUTES if separate_admin else ROUTES), *BATCH_ROUTES],
        # The span (when tracing) outermost, so refusals at the door are traced too.
        middleware=[
            *([Middleware(tracing.HttpSpans)] if tracing.enabled() else []),
            Middleware(Door, keyring=keyring),
        ],
        lifespan=lifespan,
        exception_handlers={Exception: _server_error, HTTPException: _http_error},
    )


def build_admin_app(app: Starlette) -> Starlette:
    """`/ready` and `/metrics` alone, for `ingress.admin`'s address: no keys, no lifespan of its
    own; it answers from `app`'s state, so it must serve only while `app` runs."""
    admin = Starlette(
        routes=ADMIN_ROUTES,
        exception_handlers={Exception: _server_error, HTTPException: _http_error},
    )
    admin.state = app.state
    return admin
