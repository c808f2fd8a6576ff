"""The classification API and routing agree, one text at a time and batched, through real services.

A text's category, confidence and recommended model must be the same whether it is asked
about through `/api/v1/classify/intent` (alone), `/api/v1/classify/batch` (in one batch with
texts of other lengths), or routed as a `model: MoM` chat request (alone, or while the other
requests are in flight, so the classifier's batcher joins them). Real nats-server, the built
default model in the real classifier, the real dispatcher and ingress, the mock vLLM in echo
mode.

Tolerance: probabilities within 1e-4. A text's probabilities alone and batched differ by float
rounding only (under 1e-6 for fp32 and for the static int8 graph; the build refuses a variant
that moves by more than 1e-4), while dynamic int8 quantization moved them by 0.1-0.4. The
routing header carries the confidence as `%.4f`, so it is compared to 1.5e-4 (half its last
digit, plus the same 1e-4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Varied domains and lengths (padding in every batch), some near a decision boundary
#: (short, ambiguous, or naming two domains), and one long enough to be truncated.
TEXTS = [
    "How do I reverse a linked list in Python?",
    "What are the side effects of ibuprofen?",
    "Can my landlord keep my deposit if I break the lease early?",
    "What is the capital of France?",
    "hi",
    "ok thanks",
    "Suggest a name for a pet goldfish",
    "Is it legal to take prescription drugs across the border?",
    "My employer's payroll software crashed and I was not paid; what can I do?",
    "Which statistical test should I use to compare two treatment groups in a clinical trial?",
    "I have had a headache and fever for three days, should I see a doctor?",
    "Kubernetes pod keeps restarting with CrashLoopBackOff after I changed the config map",
    "Is a verbal agreement legally binding?",
    "Tell me a fun fact about octopuses.",
    "A defendant was charged with burglary after entering a neighbour's garage at night; "
    "the prosecution relied on a confession obtained without a warning. " * 12,
    "What dose of amoxicillin is typical for a child's ear infection?",
]
PROB_TOL = 1e-4
HEADER_TOL = 1.5e-4


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline], mock: str) -> Pipeline:
    port = int(mock.rsplit(":", 1)[1])
    endpoint = {"name": "vllm", "address": "127.0.0.1", "port": port, "weight": 1.0}
    return pipeline_factory(endpoints=[endpoint], mock_url=mock)


def _alone(pipeline: Pipeline, text: str) -> dict[str, Any]:
    response = httpx.post(
        f"{pipeline.ingress_url}/api/v1/classify/intent",
        json={"text": text, "options": {"return_probabilities": True}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {**body["classification"], **body}


def _routed(headers: httpx.Headers) -> dict[str, Any]:
    return {
        "category": headers.get("x-vsr-selected-category"),
        "confidence": float(headers["x-vsr-selected-confidence"]),
        "model": headers["x-vsr-selected-model"],
    }


async def _route_all(pipeline: Pipeline, texts: list[str]) -> list[dict[str, Any]]:
    """Route every text as a `model: MoM` chat request, all in flight at once."""
    async with httpx.AsyncClient(base_url=pipeline.ingress_url, timeout=60) as client:

        async def one(text: str) -> dict[str, Any]:
            body = {"model": "MoM", "messages": [{"role": "user", "content": text}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return _routed(response.headers)

        return list(await asyncio.gather(*(one(t) for t in texts)))


def test_api_alone_api_batched_and_routing_agree(pipeline: Pipeline) -> None:
    alone = [_alone(pipeline, t) for t in TEXTS]

    batch = httpx.post(
        f"{pipeline.ingress_url}/api/v1/classify/batch",
        json={"texts": TEXTS, "options": {"return_probabilities": True}},
        timeout=60,
    )
    assert batch.status_code == 200, batch.text
    batched = batch.json()["results"]
    for text, a, b in zip(TEXTS, alone, batched, strict=True):
        assert b["category"] == a["category"], text[:60]
        assert b["recommended_model"] == a["recommended_model"], text[:60]
        assert b["confidence"] == pytest.approx(a["confidence"], abs=PROB_TOL), text[:60]
        assert set(b["probabilities"]) == set(a["probabilities"])
        for name, p in a["probabilities"].items():
            assert b["probabilities"][name] == pytest.approx(p, abs=PROB_TOL), (text[:60], name)

    with httpx.Client(base_url=pipeline.ingress_url, timeout=60) as client:
        one_by_one = []
        for text in TEXTS:
            body = {"model": "MoM", "messages": [{"role": "user", "content": text}]}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            one_by_one.append(_routed(response.headers))
    together = asyncio.run(_route_all(pipeline, TEXTS))

    for text, a, r1, rn in zip(TEXTS, alone, one_by_one, together, strict=True):
        for routed in (r1, rn):
            assert routed["category"] == a["category"], text[:60]
            assert routed["model"] == a["recommended_model"], text[:60]
            assert routed["confidence"] == pytest.approx(a["confidence"], abs=HEADER_TOL), text[:60]
    # The texts span decisions: the check is not one category compared with itself.
    assert len({a["category"] for a in alone}) >= 3
