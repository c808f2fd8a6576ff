"""modelkit/scorecard.py and `loraroute model eval --scorecard` on a small data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkit.cli.evaluate import main
from modelkit.scorecard import CHAT_TARGET, ScorecardOptions, format_scorecard, scorecard

TOPICS = {
    "technical": "How do I fix error {i} when my Python script opens a socket?",
    "medical": "My child has had a fever of {i} degrees, should I see a doctor?",
    "legal": "Can my landlord keep deposit number {i} if I break the lease?",
    "general": "What is a good recipe for {i} people with pasta?",
}


def _write(path: Path, labels: list[str], n: int, source: str) -> None:
    lines = []
    for label in labels:
        for i in range(n):
            text = TOPICS[label].format(i=i + 3)
            lines.append({"text": text, "label": label, "id": f"{source}-{label}/{i}"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "domain_train.jsonl", list(TOPICS), 10, "exam")
    _write(tmp_path / "domain_queries_train.jsonl", ["technical", "medical", "general"], 10, "q")
    _write(tmp_path / "chat_train.jsonl", list(TOPICS), 100, "chat")
    return tmp_path


def test_every_held_out_part_gets_a_row_with_its_target(
    domain_model_dir: Path, data_dir: Path
) -> None:
    options = ScorecardOptions(
        model=domain_model_dir, mmlu_model=None, data_dir=data_dir, threads=1
    )
    rows = {row.name: row for row in scorecard(options)}
    assert set(rows) == {
        "exam 4-class",
        "query-style",
        "unseen subjects, exam 4-class",
        "unseen subjects, MMLU-Pro 14-class",
        "conversational",
        "conversational, length-matched",
        *(f"conversational: chat-{label}" for label in TOPICS),
    }
    exam = rows["exam 4-class"]
    assert exam.report is not None and exam.report.n == 8  # two test rows per label
    assert exam.typo_ratio is not None and set(exam.targets) == {
        "balanced_accuracy",
        "typo_ratio",
        "ece",
    }
    assert rows["unseen subjects, exam 4-class"].report is None
    chat = rows["conversational"]
    assert chat.report is not None
    assert chat.targets["balanced_accuracy"] == CHAT_TARGET
    # About a fifth of each source is held out, in whole groups of 20 consecutive ids.
    assert chat.report.n == 4 * 20
    assert chat.met() is (
        chat.report.balanced_accuracy >= CHAT_TARGET
        and chat.min_recall is not None
        and chat.min_recall[1] >= 0.8
    )
    table = format_scorecard(list(rows.values()))
    assert table.count("\n") == len(rows) + 1
    assert "not measured: needs a model trained with --split subject" in table


def test_the_command_prints_the_table_and_writes_json(
    domain_model_dir: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAROUTE_DATA_DIR", str(data_dir))
    out = tmp_path / "card.json"
    args = ["--scorecard", "--model", str(domain_model_dir), "--mmlu-model", "/nonexistent"]
    assert main([*args, "--threads", "1", "--json", str(out)]) == 2  # no such model
    assert "mmlu_pro_train.jsonl: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--scorecard", "--data", str(data_dir / "chat_train.jsonl")])
    assert "leave out --data" in capsys.readouterr().err
