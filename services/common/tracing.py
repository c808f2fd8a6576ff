"""OpenTelemetry spans of each request, across every service: optional, off by default.

`configure(config.tracing, "<service>")` runs once per process at start-up. While tracing is
off (the default) nothing of OpenTelemetry is imported, `span` hands back one shared
`nullcontext` and `traceparent` returns what it was given: no cost on the hot path.

When on, each service records its part of a request and hands the context on in the W3C
`traceparent` that already travels with every request (`bus.RequestMeta`):

- ingress: one SERVER span per HTTP request (`HttpSpans`, an ASGI middleware), child of the
  client's `traceparent` when it sent one; the request published on NATS carries this span;
- classifier: one CONSUMER span `classify` from the message's arrival to its answer, so it
  covers the wait for a batch, the batch's inference and the forward to a dispatcher;
- dispatcher: one CONSUMER span `dispatch` (the route applied, the endpoints tried) with a
  CLIENT span `vllm` per call to vLLM, whose context vLLM receives as `traceparent`;
- jobs worker: one `job line` span per line run through the pipeline.

Spans go to an OTLP/HTTP collector in batches (the `tracing` extra installs the exporter), or
to the exporter handed to `configure` (tests use the SDK's in-memory exporter).
"""

from __future__ import annotations

import atexit
import contextlib
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from schemas.config import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "UNTRACED_PATHS",
    "HttpSpans",
    "TracingUnavailable",
    "configure",
    "enabled",
    "mark_error",
    "set_attributes",
    "shutdown",
    "span",
    "traceparent",
]

Kind = Literal["server", "client", "consumer", "producer", "internal"]
Attributes = Mapping[str, str | int | float | bool]

_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_TRACEPARENT = "traceparent"


class TracingUnavailable(RuntimeError):
    """`tracing.enabled` is set but the OpenTelemetry packages are not installed."""


def configure(settings: Tracing, service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Start recording spans as `<service_name_prefix><service>` when `settings.enabled`;
    return whether tracing is on. `exporter` replaces the OTLP exporter (and is called for each
    span as it ends, instead of in batches). Calling it again replaces the previous setup.

    Raises `TracingUnavailable` when tracing is on and the packages are missing.
    """
    global _tracer, _provider
    shutdown()
    if not settings.enabled:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as error:
        raise TracingUnavailable(
            "tracing.enabled needs the OpenTelemetry packages: pip install 'loraroute[tracing]'"
        ) from error
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name_prefix + service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        otlp = OTLPSpanExporter(endpoint=settings.endpoint or None)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("loraroute")
    return True


def shutdown() -> None:
    """Export what is still buffered and stop recording (also run at interpreter exit)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


atexit.register(shutdown)


def enabled() -> bool:
    """True while spans are recorded."""
    return _tracer is not None


def _context(parent: str | None) -> Any:
    """The context of a W3C `traceparent` value (None: the current context)."""
    if parent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({_TRACEPARENT: parent})


def span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Attributes | None = None,
    start_ns: int | None = None,
) -> AbstractContextManager[Span | None]:
    """A context manager recording one span, current while it is open (yields None when
    tracing is off). Its parent is the `traceparent` value `parent`, else the current span;
    `start_ns` (Unix ns) backdates its start. An exception leaving it is recorded on it."""
    if _tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        name,
        context=_context(parent),
        kind=SpanKind[kind.upper()],
        attributes=dict(attributes) if attributes else None,
        start_time=start_ns,
    )


def traceparent(fallback: str | None) -> str | None:
    """The W3C `traceparent` of the current span, to hand on downstream; `fallback` (the
    value received) when tracing is off or no span is open."""
    if _tracer is None:
        return fallback
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(_TRACEPARENT, fallback)


def set_attributes(current: Span | None, attributes: Attributes) -> None:
    """Add `attributes` to `current` (the value `span` yielded; None when tracing is off)."""
    if current is not None:
        current.set_attributes(dict(attributes))


def mark_error(current: Span | None, description: str) -> None:
    """Set `current`'s status to error (an answer that failed without an exception)."""
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, description))


_Scope = dict[str, Any]
_Asgi = Any


#: Probes and scrapes: answered without a span, so they do not bury the requests' traces.
UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})


class HttpSpans:
    """ASGI middleware: one SERVER span per HTTP request, named `<METHOD> <route template>`,
    with the response status; 5xx answers are marked as errors; `UNTRACED_PATHS` get none. Add
    it only when tracing is on (`enabled()`), so a request costs nothing otherwise."""

    def __init__(self, app: _Asgi) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Asgi, send: _Asgi) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope.get("headers", ()):
            if key == b"traceparent":
                incoming = value.decode("latin-1")
        method, path = scope["method"], scope["path"]
        status = 0

        async def recorded(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with span(
            f"{method} {path}",
            parent=incoming,
            kind="server",
            attributes={"http.request.method": method, "url.path": path},
        ) as current:
            try:
                await self.app(scope, receive, recorded)
            finally:
                if current is not None:
                    current.update_name(f"{method} {_template(path, scope.get('path_params'))}")
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        mark_error(current, f"HTTP {status}")


_SEGMENT = re.compile(r"[^/]+")


def _template(path: str, params: Mapping[str, Any] | None) -> str:
    """`/v1/files/file-abc` with `{"file_id": "file-abc"}` -> `/v1/files/{file_id}`, so span
    names stay few."""
    if not params:
        return path
    names = {str(value): name for name, value in params.items()}
    return _SEGMENT.sub(
        lambda m: "{" + names[m.group(0)] + "}" if m.group(0) in names else m.group(0), path
    )
