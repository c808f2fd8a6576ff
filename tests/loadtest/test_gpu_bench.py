"""loadtest/gpu_bench.sh: the dry run (CPU provider, tiny sizes, no install) runs every step.

The same script on a GPU machine installs onnxruntime-gpu and runs at full size; here it
proves the classifier bench (fp32 and fp16 graphs, IO binding, batch sizes, token budgets)
and the pipeline bench (real nats-server, mock vLLM, classifier, dispatcher, ingress) work
and write their figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_dry_run_writes_the_classifier_and_pipeline_figures(
    repo_root: Path, domain_model_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", "loadtest/gpu_bench.sh", "--dry-run", str(tmp_path)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]

    classifier = json.loads((tmp_path / "classifier.json").read_text())
    assert classifier["machine"]["provider"] == "CPUExecutionProvider"
    measured = [r for r in classifier["results"] if "texts_per_s" in r]
    seen = {
        (r["variant"], r.get("batch_size"), r.get("token_budget"), r["iobinding"]) for r in measured
    }
    for variant in ("fp32", "fp16"):
        for iobinding in (False, True):
            assert {(variant, 1, None, iobinding), (variant, 4, None, iobinding)} <= seen
            assert (variant, None, 64, iobinding) in seen
    assert all(r["texts_per_s"] > 0 for r in measured)
    assert classifier["agreement"]["fp16"]["top1_agreement_vs_fp32"] >= 0.9

    pipeline = json.loads((tmp_path / "pipeline.json").read_text())
    auto = [r for r in pipeline["results"] if r["target"] == "auto"]
    assert {r["kind"] for r in auto} == {"latency", "saturation"}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in auto)
    # The classifier alone on the same texts, and the auto rate against its best.
    (alone,) = pipeline["standalone"]
    assert alone["best"]["texts_per_s"] > 0 and alone["auto_over_standalone_best"] > 0
    assert {r["threads"] for r in alone["runs"]} == {1, 2}
