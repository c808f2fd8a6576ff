"""modelkit/evaluate.py against the built default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelkit.data import DataError
from modelkit.evaluate import EvalError, EvalOptions, evaluate
from modelkit.options import OptionsError
from services.classifier.engine import Engine
from tests.modelkit.cli.test_evaluate import ROWS, write_rows


def test_figures_match_a_count_of_the_engines_answers(
    domain_model_dir: Path, tmp_path: Path
) -> None:
    # Two rows of each label, plus rows the model is meant to get wrong (a legal question
    # labelled medical), so that balanced accuracy differs from accuracy and from 1.
    rows = [*ROWS, ("Can my landlord keep the deposit after I moved out?", "medical")]
    data = write_rows(tmp_path / "d.jsonl", rows)
    options = EvalOptions(data=data, model=domain_model_dir, threads=1)
    result = evaluate(options)

    engine = Engine.from_model_dir(domain_model_dir, intra_op_threads=1)
    predicted = np.asarray([c.label for c in engine.classify([t for t, _ in rows])])
    truth = np.asarray([y for _, y in rows])
    recalls = [np.mean(predicted[truth == label] == label) for label in sorted(set(truth))]
    assert result.clean.n == len(rows)
    assert result.clean.accuracy == pytest.approx(np.mean(predicted == truth))
    assert result.clean.balanced_accuracy == pytest.approx(np.mean(recalls))
    # The eight plain rows are all right; the mislabelled one is not.
    assert list(predicted[: len(ROWS)]) == [y for _, y in ROWS]
    assert result.clean.balanced_accuracy == pytest.approx((1 + 2 / 3 + 1 + 1) / 4)
    assert result.typos == ()
    assert result.figures()["clean"]["balanced_accuracy"] == round(np.mean(recalls), 4)


def test_typo_copies_give_one_report_each_and_their_ratios(
    domain_model_dir: Path, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    options = EvalOptions(data=data, model=domain_model_dir, typos=True, typo_copies=3, threads=1)
    result = evaluate(options)
    assert len(result.typos) == 3
    clean = result.clean.balanced_accuracy
    assert result.typo_ratios == [r.balanced_accuracy / clean for r in result.typos]
    figures = result.figures()
    assert figures["typo_ratio"] == round(sorted(result.typo_ratios)[1], 4)
    assert figures["typos"] == result.typos[0].summary()


def test_bad_options_data_labels_and_models_are_refused(
    domain_model_dir: Path, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(OptionsError, match="--part needs --held-out"):
        evaluate(EvalOptions(data=data, part="validation"))
    with pytest.raises(DataError):
        evaluate(EvalOptions(data=tmp_path / "missing.jsonl", model=domain_model_dir))
    odd = write_rows(tmp_path / "odd.jsonl", [("hello", "astrology")])
    with pytest.raises(EvalError, match="astrology"):
        evaluate(EvalOptions(data=odd, model=domain_model_dir))
    with pytest.raises(EvalError, match="cannot load"):
        evaluate(EvalOptions(data=data, model=tmp_path / "nothing"))
