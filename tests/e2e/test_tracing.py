"""Tracing across the real processes: ingress, classifier, dispatcher and jobs worker export
their spans over OTLP/HTTP to a small collector run by the test, and one request's spans form
one connected trace (same trace id, each span the child of the one before)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.conftest import Pipeline
from tests.e2e.stack import batch_lines
from tests.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int


class Collector:
    """An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf) keeping every span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                request = ExportTraceServiceRequest()
                request.ParseFromString(data)
                collector.add(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource in request.resource_spans:
                names = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            Span(
                                service=names.get("service.name", ""),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                            )
                        )

    def trace(self, trace_id: str, count: int, timeout_s: float = 60.0) -> list[Span]:
        """The spans of `trace_id` once `count` have arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        with self.lock:
            raise AssertionError(f"{trace_id}: {found} of {self.spans}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def traced(
    pipeline_factory: Callable[..., Pipeline], mock: str, collector: Collector
) -> Iterator[Pipeline]:
    """A pipeline whose every process exports spans to `collector` (batches every 100 ms)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        pipeline = pipeline_factory(
            endpoints=[{"name": "vllm-primary", "address": "127.0.0.1", "port": _port(mock)}],
            changes={"tracing": {"enabled": True, "endpoint": collector.url}},
            workers=("classifier", "dispatcher", "jobs"),
            mock_url=mock,
        )
    yield pipeline


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _chain(spans: list[Span], names: list[tuple[str, str]]) -> list[Span]:
    """The spans named (service, span name) in `names`, each the child of the one before."""
    chain: list[Span] = []
    for service, name in names:
        matches = [s for s in spans if s.service == service and s.name == name]
        assert len(matches) == 1, (service, name, spans)
        span = matches[0]
        if chain:
            assert span.parent_id == chain[-1].span_id, (span, chain[-1])
        chain.append(span)
    return chain


CHAT_CHAIN = [
    ("loraroute-ingress", "POST /v1/chat/completions"),
    ("loraroute-classifier", "classify"),
    ("loraroute-dispatcher", "dispatch"),
    ("loraroute-dispatcher", "vllm"),
]


def test_a_chat_request_is_one_trace_across_the_services(
    traced: Pipeline, collector: Collector
) -> None:
    with traced.openai(timeout=30.0) as client:
        answer = client.chat.completions.create(
            model="MoM",
            messages=[{"role": "user", "content": "What causes high blood pressure?"}],
            extra_headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"},
        )
    assert answer.choices
    chain = _chain(collector.trace(TRACE, 4), CHAT_CHAIN)
    assert chain[0].parent_id == CLIENT_SPAN
    assert [s.kind for s in chain] == [2, 5, 5, 3]  # SERVER, CONSUMER, CONSUMER, CLIENT


def test_a_request_without_traceparent_starts_its_trace_at_the_ingress(
    traced: Pipeline, collector: Collector
) -> None:
    with traced.openai(timeout=30.0) as client:
        client.chat.completions.create(
            model="MoM",
            messages=[{"role": "user", "content": "Explain async/await in JavaScript"}],
            stream=True,
        ).close()
    deadline = time.monotonic() + 60.0
    roots: list[Span] = []
    while time.monotonic() < deadline and not roots:
        with collector.lock:
            roots = [
                s
                for s in collector.spans
                if s.name == "POST /v1/chat/completions" and not s.parent_id
            ]
        time.sleep(0.1)
    assert roots, collector.spans
    chain = _chain(collector.trace(roots[0].trace_id, 4), CHAT_CHAIN)
    assert chain[0].trace_id != TRACE


def test_a_batch_line_is_one_trace_from_the_jobs_worker_to_vllm(
    traced: Pipeline, collector: Collector
) -> None:
    with traced.openai(timeout=30.0) as client:
        upload = client.files.create(file=("in.jsonl", batch_lines(1)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 90.0
        while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    deadline = time.monotonic() + 60.0
    lines: list[Span] = []
    while time.monotonic() < deadline and not lines:
        with collector.lock:
            lines = [s for s in collector.spans if s.name == "job line"]
        time.sleep(0.1)
    assert lines, collector.spans
    _chain(
        collector.trace(lines[0].trace_id, 4),
        [
            ("loraroute-jobs", "job line"),
            ("loraroute-classifier", "classify"),
            ("loraroute-dispatcher", "dispatch"),
            ("loraroute-dispatcher", "vllm"),
        ],
    )
