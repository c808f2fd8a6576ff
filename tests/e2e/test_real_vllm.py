"""The routing tests against the real vLLM harness (`make test-vllm`; marked `vllm`).

`tests/vllm/run.sh` serves a tiny model with three random LoRA adapters, so each adapter writes
different text for the same prompt. A request routed by loraroute (`model: MoM`) must produce, at
temperature 0, exactly the text vLLM produces when asked directly for the expected adapter with
the body the route implies (the category's system prompt first), and not the text of the other
adapters: the output itself proves which adapter answered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("LORAROUTE_REAL_VLLM_URL"),
        reason="needs the real vLLM harness (make test-vllm sets LORAROUTE_REAL_VLLM_URL)",
    ),
]

ADAPTERS = ("technical-lora", "medical-lora", "legal-lora")
SAMPLING = {"temperature": 0.0, "max_tokens": 12, "seed": 7}


@pytest.fixture(scope="module")
def real(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    url = httpx.URL(os.environ["LORAROUTE_REAL_VLLM_URL"])
    served = os.environ.get("LORAROUTE_REAL_VLLM_MODEL", "llama2-7b")
    return pipeline_factory(
        endpoints=[{"name": "vllm-real", "address": url.host, "port": url.port or 80}],
        base_model=served,
        mock_url=str(url).rstrip("/"),
    )


def _text(base_url: str, body: dict[str, Any]) -> tuple[str, httpx.Headers]:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    return str(data["choices"][0]["message"]["content"]), response.headers


@pytest.mark.parametrize(
    ("question", "adapter", "system_prompt"),
    [
        (
            "Explain async/await in JavaScript",
            "technical-lora",
            "You are an expert software engineer.",
        ),
        ("What causes high blood pressure?", "medical-lora", "You are a medical expert."),
    ],
)
def test_the_routed_adapter_wrote_the_answer(
    real: Pipeline, question: str, adapter: str, system_prompt: str
) -> None:
    assert real.mock_url is not None
    routed, headers = _text(
        real.ingress_url,
        {"model": "MoM", "messages": [{"role": "user", "content": question}], **SAMPLING},
    )
    assert headers["x-vsr-selected-model"] == adapter
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question},
    ]
    direct = {
        name: _text(real.mock_url, {"model": name, "messages": messages, **SAMPLING})[0]
        for name in ADAPTERS
    }
    assert len(set(direct.values())) == len(ADAPTERS), "the adapters must write different text"
    assert routed == direct[adapter]
