"""The NATS side every service shares: connecting, the request headers, and explicit replies.

Hot paths use raw nats-py (a consumed message costs about 7 µs CPU, against about 70 µs through
a FastStream handler). Three rules hold for every service:

- Every request carries `RequestMeta` in its headers: request id, absolute deadline (Unix ms)
  and `traceparent`; stages read it with `RequestMeta.from_headers` and pass it on unchanged.
- Every failure is answered on the reply subject with a `ReplyError` (`reply_error`), because
  core NATS tells a requester nothing when a responder fails: it would only see its deadline pass.
- A request published with headers and a reply subject that the publishing connection subscribes
  to gets an immediate empty message with `Status: 503` when nobody listens on the subject
  (`is_no_responders`); that is how "no classifier" or "no dispatcher" becomes a 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.client import DEFAULT_INBOX_PREFIX, Client
from nats.aio.msg import Msg

from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.wire import ReplyError, Route, encoder
from services.common.subjects import (
    HEADER_CONFIG_REVISION,
    HEADER_DEADLINE,
    HEADER_PING,
    HEADER_REPLY_TO,
    HEADER_REQUEST_ID,
    HEADER_TRACEPARENT,
)

__all__ = [
    "Msg",
    "RequestMeta",
    "answer",
    "answer_ping",
    "close",
    "connect",
    "deadline_after",
    "is_no_responders",
    "is_ping",
    "new_request_id",
    "now_ms",
    "ping",
    "reply_error",
    "reply_subject",
    "server_list",
    "to_ms",
]

_log = structlog.get_logger("loraroute.bus")

_STATUS = "Status"
_NO_RESPONDERS = "503"
#: What nats-server answers a connection whose credentials it does not accept.
_AUTHORIZATION = "Authorization Violation"


def now_ms() -> int:
    """Current Unix time in milliseconds, the unit of the deadline header."""
    return time.time_ns() // 1_000_000


def to_ms(seconds: float) -> float:
    """`seconds` in milliseconds, the unit of every `*_ms` field, header and log key."""
    return seconds * 1000.0


def deadline_after(seconds: float) -> int:
    """The absolute deadline (Unix ms) `seconds` from now."""
    return now_ms() + int(to_ms(seconds))


def new_request_id() -> str:
    """A fresh request id (32 hex characters, 128 random bits) for a request that came without
    one (five times cheaper than a `uuid4`'s hex, which builds a UUID object)."""
    return os.urandom(16).hex()


class RequestMeta(msgspec.Struct, frozen=True):
    """What travels in the headers of a request, across every stage.

    `deadline_ms` is absolute Unix time in milliseconds (None: no deadline). `reply_to` is the
    ingress inbox when the NATS reply subject is something else (see `reply_subject`).
    `config_revision` is the live config revision the sender ran (None: not known).
    """

    request_id: str
    deadline_ms: int | None = None
    traceparent: str | None = None
    reply_to: str | None = None
    config_revision: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> RequestMeta:
        """Read the headers of a received message; missing or malformed values become None
        (a missing request id becomes a fresh one, so logs can still follow the request)."""
        if not headers:
            return cls(request_id=new_request_id())
        return cls(
            request_id=headers.get(HEADER_REQUEST_ID) or new_request_id(),
            deadline_ms=_int_header(headers, HEADER_DEADLINE),
            traceparent=headers.get(HEADER_TRACEPARENT) or None,
            reply_to=headers.get(HEADER_REPLY_TO) or None,
            config_revision=_int_header(headers, HEADER_CONFIG_REVISION),
        )

    def to_headers(self) -> dict[str, str]:
        """The headers to publish this request with."""
        headers = {HEADER_REQUEST_ID: self.request_id}
        if self.deadline_ms is not None:
            headers[HEADER_DEADLINE] = str(self.deadline_ms)
        if self.traceparent:
            headers[HEADER_TRACEPARENT] = self.traceparent
        if self.reply_to:
            headers[HEADER_REPLY_TO] = self.reply_to
        if self.config_revision is not None:
            headers[HEADER_CONFIG_REVISION] = str(self.config_revision)
        return headers

    def remaining_s(self, now: int | None = None) -> float | None:
        """Seconds left before the deadline (negative once past); None without a deadline."""
        if self.deadline_ms is None:
            return None
        return (self.deadline_ms - (now_ms() if now is None else now)) / 1000.0

    def expired(self, now: int | None = None) -> bool:
        """True when the deadline has passed; work for it must be dropped, with a 504 reply."""
        left = self.remaining_s(now)
        return left is not None and left <= 0.0


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def reply_subject(msg: Msg, meta: RequestMeta) -> str | None:
    """Where the answer to `msg` goes: the ingress inbox from the headers, else the NATS reply."""
    return meta.reply_to or msg.reply or None


async def answer(
    nc: Client, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """Publish `payload` to a requester at `subject` (from `reply_subject`). Every message a
    worker sends its requester goes through here: answers, stream chunks, errors, keepalives;
    a requester may get several.

    NATS permissions decide who may (docs/operations.md, NATS security): a classifier only to
    the reply subject of a request it received (a response permission, up to 1000 messages and
    until the request's deadline), a dispatcher to any requester inbox. Raises what
    `nc.publish` raises.
    """
    await nc.publish(subject, payload, headers=dict(headers) if headers else None)


def is_no_responders(msg: Msg) -> bool:
    """True for the server's "no responders" status (an empty message with `Status: 503`)."""
    return not msg.data and bool(msg.headers) and msg.headers.get(_STATUS) == _NO_RESPONDERS  # type: ignore[union-attr]


def is_ping(msg: Msg) -> bool:
    """True for a liveness probe (`ping`), which a service answers with `answer_ping`."""
    return bool(msg.headers) and HEADER_PING in msg.headers  # type: ignore[operator]


async def answer_ping(nc: Client, msg: Msg, config_revision: int | None = None) -> None:
    """Answer a probe with an empty message, carrying the live config revision the service
    runs when given (`Lr-Config-Revision`); probes without a reply subject are ignored."""
    if msg.reply:
        headers = (
            None if config_revision is None else {HEADER_CONFIG_REVISION: str(config_revision)}
        )
        await nc.publish(msg.reply, b"", headers=headers)


async def ping(nc: Client, subject: str, timeout_s: float = 1.0) -> bool:
    """True when some service on `subject` answers a probe within `timeout_s`.

    False at once when nobody subscribes to it (no responders), or after the timeout.
    """
    try:
        await nc.request(subject, b"", timeout=timeout_s, headers={HEADER_PING: "1"})
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return True


async def reply_error(
    nc: Client,
    subject: str | None,
    kind: ErrorKind,
    message: str,
    *,
    param: str | None = None,
    route: Route | None = None,
    meta: RequestMeta | None = None,
) -> ErrorResponse:
    """Publish a `ReplyError` of `kind` to `subject`; return the error body sent.

    A request without a reply subject cannot be answered: the error is logged instead. Publish
    failures (connection closed) are logged, never raised, because the caller is already on its
    error path and has nobody else to tell.
    """
    body = error_response(kind, message, param)
    request_id = meta.request_id if meta is not None else None
    if not subject:
        _log.warning("unanswerable_error", kind=kind.name, request_id=request_id, message=message)
        return body
    payload = encoder.encode(ReplyError(status=body.status, error=body, route=route))
    headers = {HEADER_REQUEST_ID: request_id} if request_id else None
    try:
        await answer(nc, subject, payload, headers)
    except Exception as error:  # nats-py raises several unrelated classes when closed
        _log.warning("reply_failed", kind=kind.name, request_id=request_id, error=repr(error))
    return body


def server_list(url: str) -> list[str]:
    """The servers in `url`, one URL or several separated by commas (a cluster's nodes):
    `"nats://a:4222, nats://b:4222"` -> `["nats://a:4222", "nats://b:4222"]`.

    Raises `ValueError` when it names none.
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


async def connect(
    url: str,
    *,
    name: str,
    inbox_prefix: str | None = None,
    connect_timeout_s: float = 2.0,
    reconnect_wait_s: float = 0.5,
    max_reconnect_attempts: int = -1,
    startup_attempts: int = 20,
    drain_timeout_s: float = 30.0,
    ping_interval_s: float = 10.0,
    max_outstanding_pings: int = 3,
    on_disconnected: Callable[[], object] | None = None,
    on_reconnected: Callable[[], object] | None = None,
    **credentials: Any,
) -> Client:
    """Connect to NATS at `url` as `name`, with logged error and connection-state callbacks.

    `url` is one server or a comma-separated list of a cluster's nodes (`server_list`); the
    client connects to one of them at random (so clients spread over the nodes), learns the
    rest of the cluster from the server, and on losing its server moves to another at once
    (`reconnect_wait_s` is only the pause before trying the same server again). The first
    connection is tried `startup_attempts` times, `reconnect_wait_s` apart (a service
    started together with its server waits for it; at least twice), then nats-py's
    `NoServersError` is raised.
    Once connected, it reconnects `max_reconnect_attempts` times (-1: forever, so a restarted
    nats-server does not take the services down with it); while disconnected, publishes are
    buffered by the client. A server that stops answering without closing the connection (a
    network partition, a frozen host) is given up after `max_outstanding_pings` unanswered pings
    `ping_interval_s` apart (nats-py's defaults, 2 x 120 s, would keep a service on a dead node
    for minutes). `drain_timeout_s` bounds how long `nc.drain()` waits for in-flight
    handlers at shutdown. `on_disconnected` and `on_reconnected` are called (plain functions)
    when the connection drops and when it is back. `credentials` (`token`, `user`,
    `password`, `user_credentials`, `nkeys_seed`, `tls`) go to nats-py unchanged (see
    `services.common.settings.Settings.nats_options`). When the server refuses them on every
    attempt, `ConnectionRefusedError` says so (an `OSError`, as for a server that cannot be
    reached).
    """
    log = _log.bind(connection=name)
    refused: list[str] = []

    async def on_error(error: Exception) -> None:
        if _AUTHORIZATION in str(error) or isinstance(error, nats.errors.AuthorizationError):
            refused.append(str(error))
        log.warning("nats_error", error=repr(error))

    async def disconnected() -> None:
        log.warning("nats_disconnected")
        if on_disconnected is not None:
            on_disconnected()

    async def reconnected() -> None:
        log.info(
            "nats_reconnected", url=str(nc.connected_url.geturl()) if nc.connected_url else None
        )
        if on_reconnected is not None:
            on_reconnected()

    async def on_closed() -> None:
        log.info("nats_closed")

    servers = server_list(url)
    try:
        nc: Client = await nats.connect(
            servers=servers,
            name=name,
            error_cb=on_error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=on_closed,
            connect_timeout=connect_timeout_s,
            reconnect_time_wait=reconnect_wait_s,
            # nats-py applies this limit to the first connection too, where -1 would wait forever.
            max_reconnect_attempts=max(1, startup_attempts - 1),
            drain_timeout=drain_timeout_s,
            ping_interval=ping_interval_s,
            max_outstanding_pings=max_outstanding_pings,
            inbox_prefix=inbox_prefix if inbox_prefix is not None else DEFAULT_INBOX_PREFIX,
            **credentials,
        )
    except nats.errors.NoServersError as error:
        if refused:  # say why, rather than "no servers"
            raise ConnectionRefusedError(
                f"NATS refused the credentials of {name!r} ({refused[-1]}); check "
                "LORAROUTE_NATS_USER/_PASSWORD, _TOKEN, _CREDS or _NKEY"
            ) from error
        raise
    nc.options["max_reconnect_attempts"] = max_reconnect_attempts
    log.debug(
        "nats_connected",
        url=str(nc.connected_url.geturl()) if nc.connected_url else None,
        max_payload=nc.max_payload,
    )
    return nc


async def close(nc: Client) -> None:
    """Drain `nc` (finish in-flight handlers, flush publishes) then close; never raises."""
    with contextlib.suppress(
        nats.errors.ConnectionClosedError, asyncio.TimeoutError, nats.errors.FlushTimeoutError
    ):
        await nc.drain()
    if not nc.is_closed:
        await nc.close()
