"""The upstream's complete LoRA-routing example, verbatim, under `loraroute up`.

The file (a copy kept in the shared reference folder beside the repository; the test skips
where it is absent) names a vLLM on another network and a classifier directory of its own:
`up --endpoint` points the endpoint at the local mock vLLM, and the built default model is
linked where the file expects its classifier. The guide's two example queries must reach
`technical-lora` and `medical-lora`, and each config warning is printed once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLE = REPO.parent / "shared" / "reference" / "upstream-lora-routing-example.yaml"
#: The guide's two example queries and the adapters they are routed to.
GUIDE_QUERIES = {
    "Explain async/await in JavaScript": "technical-lora",
    "What causes high blood pressure?": "medical-lora",
}


def test_up_routes_the_guides_queries_on_the_upstream_example(tmp_path: Path) -> None:
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} is not here (a copy of the upstream's example)")
    # Where the file expects its classifier, relative to the working directory.
    models = tmp_path / "models"
    models.mkdir()
    (models / "category_classifier_modernbert-base_model").symlink_to(
        REPO / "models" / "loraroute-domain", target_is_directory=True
    )
    port, mock_port = free_port(), free_port()
    log_path = tmp_path / "up.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "loraroute", "up", "--config", str(EXAMPLE),
             "--endpoint", f"vllm-primary=127.0.0.1:{mock_port}", "--port", str(port),
             "--data-dir", str(tmp_path / "var"), "--mock-echo"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "loraroute is up" not in log_path.read_text(errors="replace"):
            assert up.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for text, adapter in GUIDE_QUERIES.items():
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "MoM", "messages": [{"role": "user", "content": text}]},
                timeout=30.0,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-vsr-selected-model"] == adapter, text
        # Give the children time to log anything they would repeat, then stop everything.
        time.sleep(1.0)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    output = log_path.read_text(errors="replace")
    # Each warning once: the ignored upstream keys, and the undefined reasoning family.
    assert output.count("upstream semantic-router schema") == 1, output
    assert output.count("'llama2' is not defined in reasoning_families") == 1, output
    assert "config_warning" not in output
