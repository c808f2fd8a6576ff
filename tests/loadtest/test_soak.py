"""loadtest/soak.py: a short run on the real stack, and the growth arithmetic that judges it.

The short run sends every kind of request (routed, streamed, passthrough, classification API)
and posts Batch API jobs through real processes; every request must answer 200, every batch
must complete, and the report must carry a resident-memory row for every process. A growth
limit is not asserted on a run of seconds (the allocators are still filling); the 30-minute
figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))

from soak import growth, verdict


def _report(**changes: object) -> dict[str, object]:
    report: dict[str, object] = {
        "errors": 0,
        "batches": {"unfinished_or_failed": []},
        "exited": {},
        "rss": {"ingress-1": {"growth_pct": 1.0}},
    }
    report.update(changes)
    return report


def test_growth_counts_from_the_end_of_the_warmup() -> None:
    samples = [
        {"t": 0.0, "rss_mib": {"a": 10.0, "b": 50.0}},
        {"t": 60.0, "rss_mib": {"a": 100.0, "b": 60.0}},
        {"t": 120.0, "rss_mib": {"a": 104.0, "b": 59.0}},
    ]
    rows = growth(samples, warmup_s=60.0)
    assert rows["a"] == {
        "after_warmup_mib": 100.0,
        "end_mib": 104.0,
        "peak_mib": 104.0,
        "growth_pct": 4.0,
        "second_half_growth_pct": 0.0,
    }
    assert rows["b"]["growth_pct"] == pytest.approx(-1.67)
    assert rows["b"]["peak_mib"] == 60.0


def test_growth_of_a_process_gone_by_the_end_is_unknown() -> None:
    samples = [
        {"t": 0.0, "rss_mib": {"a": 10.0}},
        {"t": 20.0, "rss_mib": {"a": None}},
    ]
    assert growth(samples, warmup_s=5.0)["a"]["growth_pct"] is None


def test_verdict_names_every_failure() -> None:
    assert verdict(_report(), max_growth=5.0) == []
    failed = verdict(
        _report(
            errors=3,
            batches={"unfinished_or_failed": [{"id": "batch_1", "status": "in_progress"}]},
            exited={"classifier-1": -9},
            rss={"ingress-1": {"growth_pct": 7.5}, "jobs-1": {"growth_pct": None}},
        ),
        max_growth=5.0,
    )
    assert len(failed) == 4
    assert failed[0] == "3 request errors"
    assert "batch_1" in failed[1] and "classifier-1" in failed[2]
    assert failed[3] == "ingress-1 resident memory grew 7.5 %"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_soak_answers_everything(
    repo_root: Path, domain_model_dir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            "loadtest/soak.py",
            *("--duration", "8", "--rate", "8", "--warmup", "2", "--sample", "1"),
            *("--batch-every", "4", "--batch-lines", "4", "--max-growth", "1000"),
            *("--json", str(report)),
        ],
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["sent"] == 64 and data["errors"] == 0 and data["failed"] == []
    assert data["statuses"] == {
        "auto 200": 32,
        "classify 200": 10,
        "passthrough 200": 11,
        "stream 200": 11,
    }
    assert data["batches"]["posted"] >= 2
    assert data["batches"]["statuses"] == {"completed": data["batches"]["posted"]}
    names = {"nats-server", "mock-vllm", "classifier-1", "dispatcher-1", "jobs-1", "ingress-1"}
    assert set(data["rss"]) == names
    assert all(row["end_mib"] > 0 for row in data["rss"].values())
    assert len(data["samples"]) >= 8
    store = data["jetstream"]
    assert store["end"]["by_stream"]["loraroute_job_results"]["messages"] >= 8
    # Batches come and go; the consumers that serve them stay the same ones.
    assert store["end"]["consumers"] == store["after_warmup"]["consumers"] > 0
