"""The ingress's door as a real process over a real nats-server: API keys (the official `openai`
client's AuthenticationError and PermissionDeniedError), models per key on every route, the
admin address, the header deadline and size cap (raw sockets), and the overload 429 given
before the body is read. A responder in the test stands in for the classifier.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import nats
import openai
import pytest
import yaml
from nats.aio.msg import Msg

from schemas.apikeys import hash_key
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    ReplyResponse,
    RouteChat,
    TextClassification,
    classify_decoder,
    encode_reply,
)
from services.common.subjects import Subjects
from tests.jobs_double import batch_input
from tests.processes import Service, free_port, write_config

pytestmark = [pytest.mark.integration]

#: The keys (never written to the config or the keys file; only their hashes are).
OPEN_KEY = "sk-open-" + uuid.uuid4().hex
MOM_KEY = "sk-mom-" + uuid.uuid4().hex
ENV_KEY = "sk-env-" + uuid.uuid4().hex
PROMPT_MARK = "purple-elephant-" + uuid.uuid4().hex[:8]
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","model":"medical-lora","choices":[]}'
MAX_HEADER = 4096


@dataclass(frozen=True)
class Ingress:
    url: str
    admin_url: str
    port: int
    subjects: Subjects
    log: Path


@pytest.fixture(scope="module")
def ingress(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    folder = tmp_path_factory.mktemp("door")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    port, admin_port = free_port(), free_port()
    keys = folder / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "team-open", "sha256": hash_key(OPEN_KEY)},
                    {"name": "team-mom", "sha256": hash_key(MOM_KEY), "models": ["MoM"]},
                ]
            }
        )
    )
    config = write_config(
        folder / "config.yaml",
        {
            "nats": {"subject_prefix": prefix},
            "ingress": {
                "port": port,
                "request_timeout_s": 5.0,
                "ready_timeout_s": 0.3,
                "auth": {"keys_file": str(keys)},
                "admin": {"port": admin_port},
                "http": {"header_timeout_s": 1.0, "max_header_bytes": MAX_HEADER},
            },
        },
    )
    log = folder / "ingress.log"
    service = Service(
        ["ingress", "--nats", nats_url, "--config", str(config), "--graceful-timeout", "2"],
        log,
        health_url=f"http://127.0.0.1:{port}/health",
        env={"LORAROUTE_API_KEYS": f"{ENV_KEY}:MoM|medical-lora"},
    ).start()
    try:
        yield Ingress(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{admin_port}",
            port,
            Subjects(prefix),
            log,
        )
    finally:
        service.stop()


async def _answer(msg: Msg) -> None:
    if "Lr-Ping" in (msg.headers or {}):
        await msg.respond(b"")
        return
    message = classify_decoder.decode(msg.data)
    if isinstance(message, ClassifyTexts):
        result = TextClassification(category="medical", confidence=0.9, label="health")
        reply = ClassifyTextsResult(results=[result] * len(message.texts), processing_time_ms=1.0)
        await msg.respond(encode_reply(reply))
    elif isinstance(message, RouteChat):
        text = json.loads(bytes(message.body))["messages"][-1]["content"]
        if "silent" not in text:
            await msg.respond(encode_reply(ReplyResponse(status=200, body=msgspec.Raw(ANSWER))))


@pytest.fixture
async def responder(nats_url: str, ingress: Ingress) -> AsyncIterator[None]:
    nc = await nats.connect(nats_url)
    await nc.subscribe(ingress.subjects.classify, cb=_answer)
    await nc.flush()
    try:
        yield
    finally:
        await nc.close()


def _client(ingress: Ingress, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{ingress.url}/v1", api_key=key, max_retries=0)


def _chat(model: str | None, text: str = "hello") -> dict[str, object]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": text}]}
    if model is not None:
        body["model"] = model
    return body


# ------------------------------------------------------------------------------ keys


async def test_no_key_or_a_wrong_key_is_401_in_openai_shape(ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=ingress.url) as http:
        missing = await http.post("/v1/chat/completions", json=_chat("MoM"))
        wrong = await http.get("/v1/models", headers={"authorization": "Bearer sk-not-a-key-123"})
        basic = await http.get("/v1/models", headers={"authorization": f"Basic {OPEN_KEY}"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert error["type"] == "AuthenticationError"
        assert error["code"] == 401 and error["param"] is None
    assert "didn't provide an API key" in missing.json()["error"]["message"]
    assert wrong.json()["error"]["message"] == "Incorrect API key provided."
    async with _client(ingress, "sk-wrong-key-0123456789") as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(
                model="MoM", messages=[{"role": "user", "content": "hello"}]
            )
    assert raised.value.status_code == 401


async def test_every_api_route_asks_for_a_key(ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=ingress.url) as http:
        answers = [
            await http.post("/api/v1/classify/intent", json={"text": "x"}),
            await http.post("/api/v1/classify/batch", json={"texts": ["x"]}),
            await http.get("/v1/files/file-0123"),
            await http.get("/v1/batches"),
            await http.post("/v1/batches", json={}),
            await http.get("/v1/no-such-route"),
        ]
        health = await http.get("/health")
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert health.status_code == 200


async def test_a_known_key_is_let_in(ingress: Ingress, responder: None) -> None:
    async with _client(ingress, OPEN_KEY) as client:
        answer = await client.chat.completions.with_raw_response.create(
            model="medical-lora", messages=[{"role": "user", "content": PROMPT_MARK}]
        )
        assert answer.status_code == 200
        models = await client.models.list()
        assert "legal-lora" in [m.id for m in models.data]
        async with httpx.AsyncClient(base_url=ingress.url) as http:
            intent = await http.post(
                "/api/v1/classify/intent",
                json={"text": PROMPT_MARK},
                headers={"authorization": f"Bearer {OPEN_KEY}"},
            )
        assert intent.status_code == 200
        assert intent.json()["classification"]["category"] == "medical"


async def test_a_key_limited_to_mom_may_name_nothing_else(
    ingress: Ingress, responder: None
) -> None:
    async with _client(ingress, MOM_KEY) as client:
        ok = await client.chat.completions.with_raw_response.create(
            model="MoM", messages=[{"role": "user", "content": "hello"}]
        )
        assert ok.status_code == 200
        for model in ("medical-lora", "llama2-7b"):
            with pytest.raises(openai.PermissionDeniedError) as raised:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello"}]
                )
            assert raised.value.status_code == 403
            body = raised.value.body
            assert isinstance(body, dict)
            assert body["type"] == "PermissionDeniedError" and body["param"] == "model"
        async with httpx.AsyncClient(base_url=ingress.url) as http:
            # No `model` means `default_model`, which this key may not use either.
            defaulted = await http.post(
                "/v1/chat/completions",
                json=_chat(None),
                headers={"authorization": f"Bearer {MOM_KEY}"},
            )
        assert defaulted.status_code == 403
        assert [m.id for m in (await client.models.list()).data] == ["MoM"]


async def test_keys_from_the_environment_are_named_and_limited(
    ingress: Ingress, responder: None
) -> None:
    async with _client(ingress, ENV_KEY) as client:
        ok = await client.chat.completions.with_raw_response.create(
            model="medical-lora", messages=[{"role": "user", "content": "hello"}]
        )
        assert ok.status_code == 200
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="legal-lora", messages=[{"role": "user", "content": "hello"}]
            )
        assert [m.id for m in (await client.models.list()).data] == ["MoM", "medical-lora"]


async def test_batch_lines_follow_the_keys_models(ingress: Ingress) -> None:
    async with _client(ingress, MOM_KEY) as client:
        allowed = await client.files.create(
            file=("in.jsonl", batch_input("a", "b")), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=allowed.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "validating"
        lines = (
            batch_input("c")
            + json.dumps(
                {
                    "custom_id": "d",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": _chat("legal-lora"),
                }
            ).encode()
        )
        refused = await client.files.create(file=("in.jsonl", lines), purpose="batch")
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.batches.create(
                input_file_id=refused.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert "Line 2" in raised.value.message and "legal-lora" in raised.value.message
        # A key for every model may run the same file.
        async with _client(ingress, OPEN_KEY) as open_client:
            other = await open_client.batches.create(
                input_file_id=refused.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert other.status == "validating"


# ------------------------------------------------------------------------------ admin address


async def test_ready_and_metrics_only_on_the_admin_address(
    ingress: Ingress, responder: None
) -> None:
    async with httpx.AsyncClient() as http:
        public_ready = await http.get(f"{ingress.url}/ready")
        public_metrics = await http.get(
            f"{ingress.url}/metrics", headers={"authorization": f"Bearer {OPEN_KEY}"}
        )
        ready = await http.get(f"{ingress.admin_url}/ready")
        metrics = await http.get(f"{ingress.admin_url}/metrics")
        chat = await http.get(f"{ingress.admin_url}/v1/models")
    assert public_ready.status_code == 404 and public_metrics.status_code == 404
    assert ready.json()["nats"] is True and ready.json()["classifier"] is True
    assert metrics.status_code == 200 and chat.status_code == 404
    text = metrics.text
    assert 'loraroute_ingress_auth_refusals_total{reason="missing_key"}' in text
    assert 'loraroute_ingress_key_requests_total{key="team-open"}' in text


async def test_keys_and_prompts_stay_out_of_logs_and_metrics(
    ingress: Ingress, responder: None
) -> None:
    for key in (OPEN_KEY, MOM_KEY, "sk-wrong-key-0123456789"):
        async with httpx.AsyncClient(base_url=ingress.url) as http:
            await http.post(
                "/v1/chat/completions",
                json=_chat("legal-lora", PROMPT_MARK),
                headers={"authorization": f"Bearer {key}"},
            )
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{ingress.admin_url}/metrics")).text
    log = ingress.log.read_text()
    for secret in (OPEN_KEY, MOM_KEY, ENV_KEY, "sk-wrong-key", PROMPT_MARK):
        assert secret not in log and secret not in metrics
    assert "team-mom" in log  # the 403 names the key
    assert "model_refused" in log


# ------------------------------------------------------------------------------ header limits


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_header_that_never_ends_is_cut_with_408(ingress: Ingress) -> None:
    with _connect(ingress.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        answer = _read_all(sock)  # the ingress closes the connection
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"RequestTimeoutError" in answer


def test_a_later_header_on_a_kept_alive_connection_has_the_same_deadline(
    ingress: Ingress,
) -> None:
    with _connect(ingress.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while b'{"status":"ok"}' not in answer:
            answer += sock.recv(65536)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")  # never finished
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_a_slow_loris_cannot_extend_the_deadline(ingress: Ingress) -> None:
    import time

    with _connect(ingress.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        closed = False
        for _ in range(200):  # a byte every 50 ms: 10 s, ten times the deadline
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        assert closed or _read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_an_idle_connection_is_closed_without_an_answer(ingress: Ingress) -> None:
    with _connect(ingress.port) as sock:
        assert _read_all(sock) == b""


def test_a_header_over_the_cap_is_431(ingress: Ingress) -> None:
    with _connect(ingress.port) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * MAX_HEADER + b"\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"RequestHeaderFieldsTooLargeError" in answer
    with _connect(ingress.port) as sock:  # a header line that never ends
        sock.sendall(b"GET /health HTTP/1.1\r\nx-big: " + b"a" * (MAX_HEADER * 4))
        assert _read_all(sock).startswith(b"HTTP/1.1 431 ")


def test_headers_under_the_cap_and_kept_alive_connections_are_served(ingress: Ingress) -> None:
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (MAX_HEADER // 2) + b"\r\n\r\n"
    with _connect(ingress.port) as sock:
        for _ in range(3):  # three requests on one connection
            sock.sendall(request)
            answer = b""
            while b'{"status":"ok"}' not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------------------ keys off, 429


@pytest.fixture(scope="module")
def open_ingress(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    folder = tmp_path_factory.mktemp("door-open")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(
        folder / "config.yaml",
        {"nats": {"subject_prefix": prefix}, "ingress": {"port": port, "max_in_flight": 2}},
    )
    log = folder / "ingress.log"
    service = Service(
        ["ingress", "--nats", nats_url, "--config", str(config), "--graceful-timeout", "2"],
        log,
        health_url=f"http://127.0.0.1:{port}/health",
        env={"LORAROUTE_API_KEYS": ""},
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        yield Ingress(url, url, port, Subjects(prefix), log)
    finally:
        service.stop()


async def test_without_keys_everything_is_open(open_ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=open_ingress.url) as http:
        models = await http.get("/v1/models")
        metrics = await http.get("/metrics")
        ready = await http.get("/ready")
    assert models.status_code == 200 and metrics.status_code == 200
    assert ready.status_code == 503 and ready.json()["nats"] is True


async def test_overload_is_refused_before_the_body_is_read(
    nats_url: str, open_ingress: Ingress
) -> None:
    nc = await nats.connect(nats_url)
    taken: list[Msg] = []

    async def take(msg: Msg) -> None:
        taken.append(msg)  # never answered

    await nc.subscribe(open_ingress.subjects.classify, cb=take)
    await nc.flush()
    async with httpx.AsyncClient(base_url=open_ingress.url, timeout=60) as http:
        holders = [
            asyncio.ensure_future(
                http.post(
                    "/v1/chat/completions",
                    json=_chat("MoM", "silent"),
                    headers={"x-loraroute-timeout": "60"},
                )
            )
            for _ in range(2)
        ]
        try:
            while len(taken) < 2:
                await asyncio.sleep(0.05)
            # Headers promising a body that never comes: the answer cannot wait for it.
            reader, writer = await asyncio.open_connection("127.0.0.1", open_ingress.port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            writer.close()
            metrics = (await http.get("/metrics")).text
        finally:
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            await nc.close()
    assert head.startswith(b"HTTP/1.1 429 ")
    assert b"retry-after: 1" in head.lower()
    assert 'loraroute_ingress_requests_total{code="429",route="chat"} 1.0' in metrics
