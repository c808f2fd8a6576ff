"""`services.common.tracing` with the SDK's in-memory exporter: off costs nothing, on links
spans through `traceparent`, the HTTP middleware names and marks its spans, and the dispatcher
hands vLLM the context of its own call span (a real loopback HTTP server records it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from schemas.config import Dispatcher as DispatcherConfig
from schemas.config import Tracing, VllmEndpoint
from schemas.wire import DispatchRequest, ReplyMessage, Route
from services.common import tracing
from services.common.bus import RequestMeta, deadline_after
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.endpoints import EndpointPool
from services.dispatcher.upstream import Upstream
from tests.processes import REPO

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT = f"00-{TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(Tracing(enabled=True), "test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _hex(number: int, width: int) -> str:
    return f"{number:0{width}x}"


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


class TestOff:
    def test_off_by_default_imports_nothing_and_passes_the_value_on(self) -> None:
        # A fresh interpreter: the ingress, classifier and dispatcher modules are loaded, tracing
        # is configured off, a span is opened; no OpenTelemetry module may have been imported.
        code = textwrap.dedent(
            """
            import sys
            import services.ingress.app, services.classifier.handlers
            import services.dispatcher.handlers, services.jobs.run_line
            from schemas.config import Tracing
            from services.common import tracing
            assert tracing.configure(Tracing(), "ingress") is False
            assert not tracing.enabled()
            with tracing.span("x", parent=PARENT) as span:
                assert span is None
                assert tracing.traceparent("given") == "given"
            loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
            assert not loaded, loaded
            print("ok")
            """
        ).replace("PARENT", repr(CLIENT))
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"

    def test_the_default_config_has_tracing_off(self) -> None:
        assert Tracing().enabled is False
        assert tracing.configure(Tracing(), "x") is False


class TestSpans:
    def test_a_span_continues_the_received_trace_and_hands_its_own_on(
        self, spans: InMemorySpanExporter
    ) -> None:
        with tracing.span("classify", parent=CLIENT, kind="consumer") as span:
            assert span is not None
            handed_on = tracing.traceparent(CLIENT)
            with tracing.span("inner") as inner:
                assert inner is not None
        outer = _by_name(spans)["classify"]
        assert outer.kind is SpanKind.CONSUMER
        assert _hex(outer.context.trace_id, 32) == TRACE
        assert outer.parent is not None and _hex(outer.parent.span_id, 16) == CLIENT_SPAN
        assert handed_on == f"00-{TRACE}-{_hex(outer.context.span_id, 16)}-01"
        child = _by_name(spans)["inner"]
        assert child.parent is not None and child.parent.span_id == outer.context.span_id

    def test_without_a_parent_a_new_trace_starts(self, spans: InMemorySpanExporter) -> None:
        with tracing.span("job line"):
            pass
        [span] = spans.get_finished_spans()
        assert span.parent is None
        assert _hex(span.context.trace_id, 32) != TRACE

    def test_the_service_name_carries_the_prefix(self) -> None:
        exporter = InMemorySpanExporter()
        tracing.configure(
            Tracing(enabled=True, service_name_prefix="lr-"), "dispatcher", exporter=exporter
        )
        try:
            with tracing.span("dispatch"):
                pass
        finally:
            tracing.shutdown()
        [span] = exporter.get_finished_spans()
        assert span.resource.attributes["service.name"] == "lr-dispatcher"

    def test_an_exception_is_recorded_and_errors_are_marked(
        self, spans: InMemorySpanExporter
    ) -> None:
        with pytest.raises(ValueError), tracing.span("vllm", kind="client"):
            raise ValueError("refused")
        with tracing.span("dispatch") as span:
            tracing.mark_error(span, "502 from vLLM")
        found = _by_name(spans)
        assert found["vllm"].status.status_code is StatusCode.ERROR
        assert found["vllm"].events[0].name == "exception"
        assert found["dispatch"].status.description == "502 from vLLM"

    def test_sample_ratio_zero_records_no_new_trace_but_follows_a_sampled_parent(self) -> None:
        exporter = InMemorySpanExporter()
        tracing.configure(Tracing(enabled=True, sample_ratio=0.0), "x", exporter=exporter)
        try:
            with tracing.span("unsampled"):
                passed_on = tracing.traceparent(None)
            with tracing.span("sampled", parent=CLIENT):
                pass
        finally:
            tracing.shutdown()
        assert [s.name for s in exporter.get_finished_spans()] == ["sampled"]
        # The decision travels too: downstream services do not record the unsampled trace.
        assert passed_on is not None and int(passed_on.rsplit("-", 1)[1], 16) & 1 == 0

    def test_shutdown_turns_it_off(self) -> None:
        tracing.configure(Tracing(enabled=True), "x", exporter=InMemorySpanExporter())
        tracing.shutdown()
        assert not tracing.enabled()
        assert tracing.traceparent(CLIENT) == CLIENT


def _app() -> Starlette:
    async def item(request: Request) -> Response:
        # What the ingress puts on the NATS request: its own span's context.
        return Response(tracing.traceparent(None) or "", 200)

    async def broken(request: Request) -> Response:
        return Response("no", 503)

    async def health(request: Request) -> Response:
        return Response("ok", 200)

    return Starlette(
        routes=[
            HttpRoute("/v1/files/{file_id}", item, methods=["GET"]),
            HttpRoute("/broken", broken, methods=["GET"]),
            HttpRoute("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(tracing.HttpSpans)],
    )


class TestHttpSpans:
    async def test_server_span_per_request_child_of_the_client(
        self, spans: InMemorySpanExporter
    ) -> None:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.get("/v1/files/file-abc", headers={"traceparent": CLIENT})
            broken = await client.get("/broken")
            assert (await client.get("/health")).status_code == 200
        found = _by_name(spans)
        server = found["GET /v1/files/{file_id}"]
        assert server.kind is SpanKind.SERVER
        assert server.attributes is not None
        assert server.attributes["http.response.status_code"] == 200
        assert server.parent is not None and _hex(server.parent.span_id, 16) == CLIENT_SPAN
        assert answer.text == f"00-{TRACE}-{_hex(server.context.span_id, 16)}-01"
        assert set(found) == {"GET /v1/files/{file_id}", "GET /broken"}  # no probe spans
        failed = found["GET /broken"]
        assert broken.status_code == 503
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.parent is None


class RecordingVllm:
    """A loopback HTTP server answering chat completions, recording each request's headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.server = TestServer(app, host="127.0.0.1")

    async def _chat(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "medical-lora",
            "choices": [],
        }
        return web.json_response(body)


@pytest.fixture
async def vllm() -> AsyncIterator[RecordingVllm]:
    fake = RecordingVllm()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


@pytest.mark.integration
async def test_vllm_receives_the_context_of_the_dispatchers_call_span(
    spans: InMemorySpanExporter, vllm: RecordingVllm
) -> None:
    assert vllm.server.port is not None
    endpoint = VllmEndpoint(name="a", address="127.0.0.1", port=vllm.server.port)
    upstream = Upstream(max_connections_per_endpoint=4, connect_timeout_s=2.0)
    dispatch = Dispatch(config=DispatcherConfig(), pool=EndpointPool([endpoint]), upstream=upstream)
    route = Route(model="medical-lora", base_model="llama2-7b", endpoints=["a"])
    body = msgspec.json.encode({"model": "MoM", "messages": [{"role": "user", "content": "hi"}]})
    meta = RequestMeta(request_id="r1", deadline_ms=deadline_after(10.0), traceparent=CLIENT)
    sent: list[ReplyMessage] = []

    async def send(message: ReplyMessage) -> None:
        sent.append(message)

    try:
        with tracing.span("dispatch", parent=meta.traceparent, kind="consumer"):
            outcome = await dispatch.run(
                DispatchRequest(route=route, body=msgspec.Raw(body)), meta, send
            )
    finally:
        await upstream.close()
    assert outcome.status == 200, sent
    found = _by_name(spans)
    call, parent = found["vllm"], found["dispatch"]
    assert call.kind is SpanKind.CLIENT
    assert call.parent is not None and call.parent.span_id == parent.context.span_id
    assert _hex(call.context.trace_id, 32) == TRACE
    assert vllm.headers[0]["traceparent"] == f"00-{TRACE}-{_hex(call.context.span_id, 16)}-01"
