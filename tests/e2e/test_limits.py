"""Limits and what failures tell the client, on the whole pipeline of real processes.

The pipeline runs on a nats-server of its own with a small `max_payload` (32 KiB), so an answer
of a few choices is already larger than one NATS message; the mock vLLM generates (no echo).
The last test takes the pipeline apart piece by piece (vLLM failing, vLLM gone, no dispatcher,
no classifier, no NATS) and reads every answer for internals a client must not see.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraroute.natsserver import NatsServer
from tests.e2e.conftest import Pipeline, start_mock, start_pipeline
from tests.processes import Service

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_PAYLOAD = 32 * 1024
HI = [{"role": "user", "content": "What causes high blood pressure?"}]


@pytest.fixture(scope="module")
def small_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats-small"), max_payload=MAX_PAYLOAD)
    server.start()
    try:
        yield server
    finally:
        server.stop()  # the last test may have stopped it already; stopping again is a no-op


@pytest.fixture(scope="module")
def vllm(e2e_folder: Path) -> Iterator[tuple[Service, int]]:
    # Faults by marker: a prompt with `poison500` gets vLLM's 500, one with `poisondrop` a
    # connection cut before the answer.
    service, port = start_mock(
        e2e_folder, "--fault", "500@~poison500", "--fault", "drop@~poisondrop", echo=False
    )
    try:
        yield service, port
    finally:
        service.stop()


@pytest.fixture(scope="module")
def pipeline(
    small_nats: NatsServer, e2e_folder: Path, vllm: tuple[Service, int]
) -> Iterator[Pipeline]:
    endpoint = {"name": "gpu-east-7", "address": "127.0.0.1", "port": vllm[1]}
    started = start_pipeline(
        small_nats.url,
        e2e_folder,
        endpoints=[endpoint],
        # A message cap from the config file (the default, 1024, needs more than 32 KiB).
        changes={"dispatcher": {"max_attempts": 1}, "limits": {"max_messages": 100}},
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def http(pipeline: Pipeline) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pipeline.ingress_url, timeout=30.0) as client:
        yield client


def test_an_answer_larger_than_one_nats_message_arrives_whole(
    pipeline: Pipeline, http: httpx.Client, vllm: tuple[Service, int]
) -> None:
    request: dict[str, Any] = {"n": 8, "max_tokens": 2000, "extra_body": {"ignore_eos": True}}
    with pipeline.openai(timeout=30.0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="llama2-7b",
            messages=HI,  # type: ignore[arg-type]
            **request,
        )
    assert raw.status_code == 200
    assert len(raw.content) > 2 * MAX_PAYLOAD, "the answer must need several NATS messages"
    answer = raw.parse()
    assert [c.index for c in answer.choices] == list(range(8))
    assert all(c.finish_reason == "length" for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 16_000
    # Byte for byte what vLLM generated: the same request straight to the mock (generation is
    # deterministic) gives the same choices.
    direct = http.post(
        f"http://127.0.0.1:{vllm[1]}/v1/chat/completions",
        json={"model": "llama2-7b", "messages": HI, "n": 8, "max_tokens": 2000, "ignore_eos": True},
    ).json()
    assert [c.message.content for c in answer.choices] == [
        c["message"]["content"] for c in direct["choices"]
    ]


def _deep(levels: int) -> bytes:
    return (
        b'{"model":"MoM","messages":[{"role":"user","content":"hi"}],"x":'
        + b"[" * levels
        + b"]" * levels
        + b"}"
    )


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"n": 2147483648}, "n", "n must be at most 16, got 2147483648."),
        ({"n": 17}, "n", "n must be at most 16, got 17."),
        ({"max_tokens": 40000}, "max_tokens", "max_tokens must be at most 32768, got 40000."),
        (
            {"max_completion_tokens": "40000"},
            "max_completion_tokens",
            "max_completion_tokens must be at most 32768, got 40000.",
        ),
        ({"min_tokens": 10**12}, "min_tokens", "min_tokens must be at most 32768, got "),
        (
            {"messages": [{"role": "user", "content": "x"}] * 101},
            "messages",
            "messages may hold at most 100 messages, got 101.",
        ),
        (_deep(65), "body", "The JSON body nests arrays and objects deeper than 64 levels."),
        (_deep(1000), "body", "The JSON body nests arrays and objects deeper than 64 levels."),
    ],
)
def test_each_cap_is_a_400_naming_its_field(
    http: httpx.Client, body: dict[str, Any] | bytes, param: str, message: str
) -> None:
    if isinstance(body, dict):
        content = json.dumps({"model": "MoM", "messages": HI, **body}).encode()
    else:
        content = body
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)
    assert error["message"].startswith(message)


def test_the_classification_api_refuses_deep_json(http: httpx.Client) -> None:
    deep = b'{"text":"hi","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = http.post(
        "/api/v1/classify/intent", content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
_BODIES = st.fixed_dictionaries(
    {"model": st.sampled_from(["MoM", "llama2-7b", "medical-lora"]) | _VALUES},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant"]) | _VALUES},
                optional={"content": st.text(max_size=40) | _VALUES},
            ),
            max_size=3,
        )
        | _VALUES,
        "n": _VALUES | st.integers(min_value=-3, max_value=40),
        "max_tokens": _VALUES | st.integers(min_value=-3, max_value=50_000),
        "min_tokens": _VALUES | st.integers(min_value=-3, max_value=50_000),
        "temperature": _VALUES | st.floats(allow_nan=False, allow_infinity=False),
        "stream": _VALUES,
    },
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        _BODIES.map(lambda b: json.dumps(b).encode()),
        st.binary(max_size=80),
        st.integers(min_value=60, max_value=20_000).map(_deep),
    )
)
def test_no_body_makes_a_500(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (body[:200], response.status_code, response.text[:300])


# ------------------------------------------------------------------------------ error hygiene


def _internals(pipeline: Pipeline) -> re.Pattern[str]:
    """What no client-facing answer may contain: URLs and addresses, exception reprs and
    tracebacks, NATS subjects (this pipeline's prefix, inboxes), endpoint names."""
    return re.compile(
        r"https?://|nats://|127\.0\.0\.1|\w+Error\(|Exception|Traceback|_INBOX|gpu-east-7|"
        + re.escape(pipeline.prefix),
    )


def _ask(http: httpx.Client, text: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": "llama2-7b", "messages": [{"role": "user", "content": text}]}
    return http.post("/v1/chat/completions", json={**body, "stream": stream}, timeout=30.0)


def _until(
    ask: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    deadline = time.monotonic() + 20.0
    while True:
        response = ask()
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_failures_tell_the_client_no_internals(
    pipeline: Pipeline,
    http: httpx.Client,
    vllm: tuple[Service, int],
    small_nats: NatsServer,
) -> None:
    internals = _internals(pipeline)
    seen: dict[str, httpx.Response] = {}

    def check(name: str, response: httpx.Response, status: int, says: str) -> None:
        seen[name] = response
        assert response.status_code == status, (name, response.text)
        assert not internals.search(response.text), (name, response.text)
        assert says in response.json()["error"]["message"], (name, response.text)

    check("vLLM answers 500", _ask(http, "poison500"), 500, "")
    check("vLLM cuts the connection", _ask(http, "poisondrop"), 502, "model server")
    # A stream cut after its first bytes: 200, then an in-band error event.
    stream = _ask(http, "poisondrop", stream=True)
    assert stream.status_code == 200 and "The stream from the model server broke." in stream.text
    assert not internals.search(stream.text), stream.text

    vllm[0].stop()
    check("vLLM down", _ask(http, "hello"), 502, "The model server could not be reached.")

    dispatcher = next(s for s in pipeline.services if s.name.startswith("dispatcher"))
    dispatcher.stop()
    no_dispatcher = _until(lambda: _ask(http, "hello"), lambda r: r.status_code == 503)
    check("no dispatcher", no_dispatcher, 503, "No dispatcher is available")

    classifier = next(s for s in pipeline.services if s.name.startswith("classifier"))
    classifier.stop()
    no_classifier = _until(
        lambda: _ask(http, "hello"), lambda r: "classifier" in r.json()["error"]["message"]
    )
    check("no classifier", no_classifier, 503, "No classifier is available")

    small_nats.stop()
    bus_down = _until(lambda: _ask(http, "hello"), lambda r: "bus" in r.json()["error"]["message"])
    # The cause is the bus, not a missing classifier.
    check("NATS down", bus_down, 503, "The message bus is unavailable")
    assert len(seen) == 6
