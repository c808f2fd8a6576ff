"""The docs' code samples: each is a file under docs/examples/, shown verbatim, and run here.

A fenced block in README.md or docs/*.md is a sample unless it is marked `text` (diagrams,
directory trees). A sample is preceded by `<!-- example: docs/examples/NAME -->` and must equal
that file. The samples that need the whole pipeline run in tests/e2e/test_docs_examples.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from modelkit.cli.average import build_parser as average_parser
from modelkit.cli.memory import build_parser as memory_parser
from modelkit.cli.train import build_parser
from schemas.apikeys import hash_key, load_keys_file
from schemas.config import decode_config
from services.ingress.auth import load_keyring
from tests.processes import REPO, Service, free_port

EXAMPLES = REPO / "docs" / "examples"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- example: (docs/examples/[\w.-]+) -->")
#: Samples not run here, and why. The README's two commands are what CI itself runs
#: (`make test`); `make run` and `loraroute up` are what tests/e2e/test_launcher_up.py starts.
NOT_RUN = {
    "two-commands.sh": "CI runs `make test`; `make run` = `make model` + `loraroute up`",
    "up.sh": "`loraroute up` is started by tests/e2e/test_launcher_up.py",
    "routed-log.sh": "`loraroute up` is started by tests/e2e/test_launcher_up.py, which reads "
    "its `routed` log lines",
    "fuzz-api.sh": "minutes of measurement for docs/reliability.md; its options are checked "
    "here and tests/e2e/test_fuzz_api.py runs the same generation, smaller",
    "faults.sh": "minutes of measurement for docs/reliability.md; its options are checked here",
    "bench-vs-litellm.sh": "ten minutes of measurement and a LiteLLM install for "
    "docs/benchmarks.md; its options are checked here and tests/loadtest/"
    "test_bench_vs_litellm.py runs the script's smoke mode",
    "forgery-tests.sh": "the tests it names are part of this suite",
}


def _samples() -> list[tuple[Path, int, str, str | None]]:
    """(page, line, block text, included example path or None) for every non-text block."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            if lines[i].startswith("```"):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                if lines[i] != "```text":
                    marker = MARKER.fullmatch(lines[i - 1]) if i else None
                    body = "\n".join(lines[i + 1 : end]) + "\n"
                    found.append((page, i + 1, body, marker.group(1) if marker else None))
                i = end
            i += 1
    return found


def _run(script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_sample_is_an_example_file_shown_verbatim() -> None:
    included = set()
    for page, line, body, example in _samples():
        where = f"{page.relative_to(REPO)}:{line}"
        assert example is not None, f"{where}: a code sample without an example marker"
        assert body == (REPO / example).read_text(encoding="utf-8"), (
            f"{where} differs from {example}"
        )
        included.add(Path(example).name)
    assert included == {p.name for p in EXAMPLES.iterdir()}, "an example no page shows"
    assert set(NOT_RUN) <= included


def test_config_check_example() -> None:
    done = _run((EXAMPLES / "check-config.sh").read_text())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "config/config.yaml: OK\n"


def test_classify_example() -> None:
    done = _run((EXAMPLES / "classify.sh").read_text())
    assert done.returncode == 0, done.stderr
    assert "medical" in done.stdout  # ibuprofen with amoxicillin
    assert '"category": "technical"' in done.stdout  # the --json one: a git question
    assert "computer science" in done.stdout  # the MMLU-Pro model on a Turing machine


def test_mmlu_categories_example_drives_the_shipped_categories(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    sample = yaml.safe_load((EXAMPLES / "mmlu-categories.yaml").read_text(encoding="utf-8"))
    labels = {c["name"]: c["mmlu_categories"] for c in sample["categories"]}
    assert set(labels) == {c["name"] for c in data["categories"]}
    for category in data["categories"]:
        category["mmlu_categories"] = labels[category["name"]]
    data["classifier"]["category_model"]["model_id"] = str(REPO / "models" / "loraroute-mmlu-pro")
    data["classifier"]["category_model"].pop("category_mapping_path", None)
    config = tmp_path / "mmlu.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    done = _run(f"loraroute config check {shlex.quote(str(config))}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ab_split_example_splits_nine_to_one() -> None:
    from schemas.config import decode_config
    from services.classifier.route import Router

    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    sample = yaml.safe_load((EXAMPLES / "ab-split.yaml").read_text(encoding="utf-8"))
    data["model_config"]["llama2-7b"]["loras"] += sample["model_config"]["llama2-7b"]["loras"][1:]
    medical = next(c for c in data["categories"] if c["name"] == "medical")
    medical["model_scores"] = sample["categories"][0]["model_scores"]
    data["routing"] = {**data.get("routing", {}), **sample["routing"]}
    router = Router(decode_config(data))
    picks = [router.decide("medical", 0.9, key=f"user-{i}").model for i in range(5000)]
    assert 0.08 < picks.count("medical-lora-v2") / len(picks) < 0.12


def test_mock_vllm_example_serves_its_adapters(tmp_path: Path) -> None:
    port = free_port()
    command = " ".join((EXAMPLES / "mock-vllm.sh").read_text().replace("\\\n", " ").split())
    service = Service.shell(
        command.replace("--port 8000", f"--port {port}"),
        tmp_path / "mock.log",
        health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    try:
        cards = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
        assert [c["id"] for c in cards] == [
            "base-model",
            "technical-lora",
            "medical-lora",
            "legal-lora",
        ]
    finally:
        service.stop()


def test_training_examples_name_real_options(tmp_path: Path) -> None:
    # Training runs take tens of minutes: their options are checked, the table script is run.
    for line in (EXAMPLES / "train.sh").read_text().splitlines():
        words = shlex.split(line.split("#")[0].replace('"$(mktemp -d)"', str(tmp_path)))
        if words[:3] == ["loraroute", "model", "train"]:
            build_parser().parse_args(words[3:])
        elif words[:3] == ["loraroute", "model", "average"]:
            average_parser().parse_args(words[3:])
        elif words[:3] == ["loraroute", "model", "memory"]:
            memory_parser().parse_args(words[3:])
        else:
            assert words[0] == "python"
            done = _run(shlex.join([sys.executable, *words[1:]]))
            assert done.returncode == 0, done.stderr
            assert done.stdout.count("|") > 10  # a table row


def test_api_keys_example_writes_a_keys_file_the_ingress_config_names(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),  # this checkout's `loraroute`, wherever it is installed from
    }
    done = subprocess.run(
        ["bash", "-e", str(EXAMPLES / "api-keys.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    entries = load_keys_file(tmp_path / "keys.yaml")
    assert [(e.name, e.models) for e in entries] == [("team-a", ["MoM"]), ("ops", None)]
    assert entries[0].sha256 == hash_key(key)
    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    data["ingress"] = yaml.safe_load((EXAMPLES / "ingress-door.yaml").read_text())["ingress"]
    data["ingress"]["auth"]["keys_file"] = str(tmp_path / "keys.yaml")
    config = decode_config(data)
    assert config.ingress.admin.port == 9090
    assert load_keyring(config, None).names == ["team-a", "ops"]


def test_measurement_examples_name_real_options() -> None:
    for name in ("fuzz-api.sh", "faults.sh", "bench-vs-litellm.sh", "soak.sh"):
        words = shlex.split((EXAMPLES / name).read_text(encoding="utf-8"))
        assert words[0] == "python"
        shown = subprocess.run(
            [sys.executable, words[1], "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for word in words[2:]:
            if word.startswith("--"):
                assert word in shown, f"{name}: {word} is not an option of {words[1]}"
