"""``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (runtime LoRA updating on)."""

from __future__ import annotations

import httpx
import pytest

from tests.conformance.conftest import Target
from tests.conformance.helpers import greedy

HI = [{"role": "user", "content": "hi"}]


def _error(kind: str, message: str, code: int) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def test_load_use_unload_cycle(target: Target, http: httpx.Client) -> None:
    name, path = "legal-copy", target.adapters["legal-lora"]
    response = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
    assert response.status_code == 200
    assert response.text == f"Success: LoRA adapter '{name}' added successfully."
    assert "content-type" not in response.headers
    try:
        cards = http.get("/v1/models").json()["data"]
        assert cards[-1]["id"] == name  # runtime loads are appended
        assert (cards[-1]["root"], cards[-1]["parent"]) == (path, target.model)

        # Same weights under another name: the same text as the original adapter.
        def text(model: str) -> str:
            body = {"model": model, "messages": HI, **greedy(8)}
            reply = http.post("/v1/chat/completions", json=body).json()
            assert reply["model"] == model
            return str(reply["choices"][0]["message"]["content"])

        assert text(name) == text("legal-lora")

        again = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        assert again.status_code == 400
        assert again.json() == _error(
            "InvalidUserInput",
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
            "in place, set 'load_inplace' to True.",
            400,
        )
        inplace = {"lora_name": name, "lora_path": path, "load_inplace": True}
        assert http.post("/v1/load_lora_adapter", json=inplace).status_code == 200
    finally:
        response = http.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert response.status_code == 200
    assert response.text == f"Success: LoRA adapter '{name}' removed successfully."
    assert name not in [c["id"] for c in http.get("/v1/models").json()["data"]]
    gone = http.post("/v1/chat/completions", json={"model": name, "messages": HI})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError"
    again = http.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert again.status_code == 404
    assert again.json() == _error(
        "NotFoundError", f"The lora adapter '{name}' cannot be found.", 404
    )


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            {"lora_name": "", "lora_path": "x"},
            400,
            _error("InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.", 400),
        ),
        (
            {"lora_name": "tiny-llama", "lora_path": "x"},
            400,
            _error(
                "InvalidUserInput",
                "The lora adapter 'tiny-llama' conflicts with a served base model.",
                400,
            ),
        ),
        (
            {"lora_name": "bogus", "lora_path": "models/does-not-exist"},
            404,
            _error(
                "NotFoundError",
                "Loading lora bogus failed: No adapter found for models/does-not-exist",
                404,
            ),
        ),
        (
            {"lora_name": "bogus", "lora_path": "/tmp/nope/does-not-exist"},
            404,
            _error("NotFoundError", "Loading lora bogus failed: No adapter found for <path>", 404),
        ),
        (
            {"lora_name": "x"},
            400,
            {
                "error": {
                    "message": "1 validation error:\n  {'type': 'missing', 'loc': "
                    "'body.lora_path', 'msg': 'Field required', 'input': '<dict of 1 items>'}",
                    "type": "Bad Request",
                    "param": "body.lora_path",
                    "code": 400,
                }
            },
        ),
    ],
    ids=["empty name", "base name", "relative path", "system path hidden", "missing path"],
)
def test_load_errors(
    http: httpx.Client, body: dict[str, str], status: int, expected: dict[str, object]
) -> None:
    response = http.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == status
    assert response.json() == expected


def test_unload_errors(http: httpx.Client) -> None:
    response = http.post("/v1/unload_lora_adapter", json={"lora_name": ""})
    assert response.status_code == 400
    assert response.json() == _error(
        "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.", 400
    )
    response = http.post("/v1/unload_lora_adapter", json={})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body.lora_name"


def test_rank_above_max_lora_rank_is_a_500_and_the_server_stays_up(
    target: Target, http: httpx.Client
) -> None:
    if target.high_rank_lora is None:
        pytest.skip("the target names no rank-16 adapter (LORAROUTE_REAL_VLLM_HIGH_RANK_LORA)")
    body = {"lora_name": "wide-lora", "lora_path": target.high_rank_lora}
    response = http.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 500
    assert response.json() == _error(
        "InternalServerError",
        "Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater than "
        "max_lora_rank 8.', please check the stack trace above for the root cause",
        500,
    )
    assert http.get("/health").status_code == 200
    assert "wide-lora" not in [c["id"] for c in http.get("/v1/models").json()["data"]]
