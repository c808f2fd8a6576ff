"""The routing tests against the real vLLM harness (`make test-vllm`; marked `vllm`).

`tests/vllm/run.sh` serves a tiny model with three random LoRA adapters, so each adapter writes
different text for the same prompt. A request routed by loraroute (`model: MoM`) must produce, at
temperature 0, exactly the text vLLM produces when asked directly for the expected adapter with
the body the route implies (the category's system prompt first), and not the text of the other
adapters: the output itself proves which adapter answered.
"""

from __future__ import annotations

import io
import json
import os
import time
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
        workers=("classifier", "dispatcher", "jobs"),
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


def test_a_batch_through_real_vllm_is_answered_by_the_routed_adapters(real: Pipeline) -> None:
    """A small batch (`model: MoM` lines) through the Batch API and the jobs worker: each
    output line is the text its routed adapter writes when asked directly."""
    assert real.mock_url is not None
    questions = {
        "tech": ("Explain async/await in JavaScript", "technical-lora"),
        "med": ("What causes high blood pressure?", "medical-lora"),
    }
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "MoM", "messages": [{"role": "user", "content": q}], **SAMPLING},
        }
        for custom_id, (q, _) in questions.items()
    ]
    client = real.openai(timeout=60)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 240
    while batch.status not in {"completed", "failed", "expired", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    output = {
        row["custom_id"]: row["response"]["body"]
        for row in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())
    }
    assert set(output) == set(questions)
    system_prompts = {
        "technical-lora": "You are an expert software engineer.",
        "medical-lora": "You are a medical expert.",
    }
    for custom_id, (question, adapter) in questions.items():
        assert output[custom_id]["model"] == adapter
        messages = [
            {"role": "system", "content": system_prompts[adapter]},
            {"role": "user", "content": question},
        ]
        direct, _ = _text(real.mock_url, {"model": adapter, "messages": messages, **SAMPLING})
        assert output[custom_id]["choices"][0]["message"]["content"] == direct
