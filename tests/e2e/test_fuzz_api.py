"""The ingress against requests generated from its own OpenAPI document (schemathesis): a few
hundred cases, valid and invalid, through the real pipeline; none may get a 5xx, hang or bring
a process down. `loadtest/fuzz_api.py` runs the same at 10,000 requests (docs/reliability.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.e2e.conftest import Pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Cases per operation and mode; with 15 operations that is a few hundred requests in all.
EXAMPLES = 12
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def fuzzed(pipeline_factory: Callable[..., Pipeline], mock: str) -> Pipeline:
    port = int(mock.rsplit(":", 1)[1])
    return pipeline_factory(
        endpoints=[{"name": "vllm-primary", "address": "127.0.0.1", "port": port}],
        workers=("classifier", "dispatcher", "jobs"),
        mock_url=mock,
    )


@pytest.mark.timeout(600)
def test_generated_requests_get_no_5xx_and_no_hang(fuzzed: Pipeline) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.ingress_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    session = requests.Session()
    sent: list[tuple[str, int]] = []
    failures: list[str] = []

    def call(case: Any) -> None:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        try:
            response = case.call(base_url=fuzzed.ingress_url, session=session, timeout=TIMEOUT_S)
        except requests.RequestException as error:
            failures.append(f"{label}: {error!r} for {case.body!r:.200}")
            return
        sent.append((label, response.status_code))
        if response.status_code >= 500:
            failures.append(f"{label}: {response.status_code} {response.content[:200]!r}")

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                call(case)

            # An operation without inputs has no invalid requests to generate.
            with contextlib.suppress(Unsatisfiable):
                run()

    assert not failures, failures
    statuses = {status for _, status in sent}
    assert len(sent) >= 200 and {200, 400, 404} <= statuses
    # Generated chat requests reached vLLM and were answered.
    assert ("POST /v1/chat/completions", 200) in sent
    for service in fuzzed.services:
        assert service.process is not None and service.process.poll() is None, service.name
