"""loadtest/bench_vs_litellm.py in its smoke mode, without LiteLLM (installing it takes minutes).

The real pipeline (nats-server, mock vLLM, classifier, dispatcher, ingress) answers every phase
(1 connection, saturation, two open-loop rates); the report has the medians, the ratios, the
targets (those that need LiteLLM marked not measured) and, where matplotlib (the `bench`
extra) is installed, the two plots.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_quick_run_reports_direct_and_passthrough(
    repo_root: Path, domain_model_dir: Path, tmp_path: Path
) -> None:
    report, plots = tmp_path / "report.json", tmp_path / "plots"
    draws = importlib.util.find_spec("matplotlib") is not None
    run = subprocess.run(
        [
            sys.executable,
            "loadtest/bench_vs_litellm.py",
            "--quick",
            "--targets",
            "direct",
            "passthrough",
            "--json",
            str(report),
            *(["--plots", str(plots)] if draws else []),
        ],
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    data = json.loads(report.read_text())

    assert data["litellm"] is None
    modes = {(r["target"], r["mode"]) for r in data["results"]}
    for target in ("direct", "passthrough"):
        assert {(target, m) for m in ("latency", "saturation", "open")} <= modes
    for r in data["results"]:
        assert r["requests"] > 0 and r["errors"] == 0 and r["timeouts"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["cpu_ms_per_request"]["mock-vllm"] > 0, r

    closed = data["summary"]["closed"]
    assert closed["direct"]["added_p50_ms"] == 0
    # Three more processes and two NATS hops cost time and CPU.
    assert closed["passthrough"]["added_p50_ms"] > 0
    assert closed["passthrough"]["req_per_s"] > 0 and closed["direct"]["req_per_s"] > 0
    cpu = closed["passthrough"]["cpu_ms_per_request"]
    assert all(cpu[n] > 0 for n in ("ingress", "classifier", "dispatcher"))
    rates = [p["rate"] for p in data["summary"]["open"]["passthrough"]]
    assert rates == data["args"]["rates"] == [50.0, 200.0]

    ratios = data["ratios"]
    assert ratios["plumbing_cpu_ms_per_request"] == pytest.approx(
        sum(cpu[n] for n in ("ingress", "classifier", "dispatcher", "nats-server")), rel=0.01
    )
    assert 0 < ratios["passthrough_over_direct_req_per_s"] < 1.5
    assert ratios["auto_over_litellm-2_req_per_s"] is None
    throughput, latency, plumbing = data["targets"]
    assert throughput["met"] is None and latency["met"] is None  # they need LiteLLM
    assert plumbing["value"] == ratios["plumbing_cpu_ms_per_request"]
    assert plumbing["met"] == (plumbing["value"] <= 0.3)
    assert "targets:" in run.stdout and "| passthrough |" in run.stdout

    if not draws:
        return
    written = sorted(p.name for p in plots.iterdir())
    assert written == ["latency-p50.png", "latency-p99.png"]
    for png in plots.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < png.stat().st_size < 100_000
