"""`schemas.openapi`: the document lists exactly the routes the ingress serves, its schemas are
the Structs the ingress decodes with, it loads as OpenAPI (schemathesis reads it), and
`loraroute openapi` prints it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import schemathesis
from starlette.routing import Route as HttpRoute

from schemas.config import load_config
from schemas.openai import ChatCompletionRequest
from schemas.openapi import OPERATIONS, document, document_bytes
from services.ingress.app import build_app
from tests.processes import REPO


def _served() -> set[tuple[str, str]]:
    config, _ = load_config(REPO / "config" / "config.yaml")
    app = build_app(config, "nats://127.0.0.1:1")
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, HttpRoute)
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                served.add((method.lower(), route.path))
    return served


def test_the_document_covers_every_route_the_ingress_serves() -> None:
    paths = document()["paths"]
    listed = {(method, path) for path, ops in paths.items() for method in ops}
    assert listed == _served()


def test_request_bodies_are_the_structs_the_ingress_decodes() -> None:
    doc = document()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    _, components = msgspec.json.schema_components(
        [ChatCompletionRequest], ref_template="#/components/schemas/{name}"
    )
    assert (
        doc["components"]["schemas"]["ChatCompletionRequest"] == components["ChatCompletionRequest"]
    )
    assert doc["components"]["schemas"]["ChatCompletionRequest"]["required"] == ["messages"]


def test_every_operation_answers_errors_in_the_openai_envelope() -> None:
    for op in OPERATIONS:
        answers = document()["paths"][op.path][op.method]["responses"]
        assert "200" in answers and "500" in answers
        for status, answer in answers.items():
            if status != "200":
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_schemathesis_loads_it_and_finds_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(json.loads(document_bytes()))
    found = {
        (result.ok().method.lower(), result.ok().path) for result in schema.get_all_operations()
    }
    assert found == {(op.method, op.path) for op in OPERATIONS}


def test_loraroute_openapi_prints_the_document(tmp_path: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "loraroute", "openapi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(printed.stdout) == json.loads(document_bytes())
    out = tmp_path / "openapi.json"
    subprocess.run(
        [sys.executable, "-m", "loraroute", "openapi", "-o", str(out)], cwd=REPO, check=True
    )
    assert json.loads(out.read_text()) == json.loads(document_bytes())
