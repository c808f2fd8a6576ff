"""Tests for modelkit/scores.py on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from modelkit.scores import (
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    expected_calibration_error,
    format_report,
    per_class,
    report,
)

Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0], 2)


def test_accuracy_and_balanced_accuracy() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert accuracy(cm) == pytest.approx(3 / 5)
    # recalls 1/2, 2/2, 0/1
    assert balanced_accuracy(cm) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_balanced_accuracy_ignores_classes_without_true_examples() -> None:
    cm = confusion_matrix([0, 0, 1], [0, 0, 2], 3)
    assert balanced_accuracy(cm) == pytest.approx((1.0 + 0.0) / 2)


def test_balanced_accuracy_differs_from_accuracy_under_imbalance() -> None:
    # 9 of class 0 all right, 1 of class 1 wrong: accuracy 0.9, balanced 0.5.
    cm = confusion_matrix([0] * 9 + [1], [0] * 10, 2)
    assert accuracy(cm) == pytest.approx(0.9)
    assert balanced_accuracy(cm) == pytest.approx(0.5)


def test_per_class_precision_recall_f1() -> None:
    rows = per_class(confusion_matrix(Y_TRUE, Y_PRED, 3))
    assert rows[0].precision == pytest.approx(1 / 2)
    assert rows[0].recall == pytest.approx(1 / 2)
    assert rows[0].f1 == pytest.approx(1 / 2)
    assert rows[1].precision == pytest.approx(2 / 3)
    assert rows[1].recall == pytest.approx(1.0)
    assert rows[1].f1 == pytest.approx(0.8)
    # Never predicted: zero denominators give 0, not NaN.
    assert (rows[2].precision, rows[2].recall, rows[2].f1, rows[2].support) == (0.0, 0.0, 0.0, 1)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, [0, 0, 0, 1]) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model() -> None:
    probs = np.array([[1.0, 0.0]] * 4)
    assert expected_calibration_error(probs, [0, 0, 1, 1]) == pytest.approx(0.5)


def test_ece_weights_bins_by_their_share() -> None:
    # Bin of 0.9 (2 rows, both right): gap 0.1. Bin of 0.6 (2 rows, one right): gap 0.1.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = [0, 0, 0, 0]
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)


def test_ece_of_nothing_is_zero() -> None:
    assert expected_calibration_error(np.zeros((0, 2)), []) == 0.0


def test_report_and_its_rendering() -> None:
    probs = np.eye(3)[Y_PRED] * 0.8 + 0.2 / 3
    r = report(["a", "bb", "ccc"], probs, Y_TRUE)
    assert r.n == 5
    assert r.accuracy == pytest.approx(0.6)
    assert r.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    text = format_report(r)
    for needle in ("balanced accuracy", "ECE", "precision", "confusion matrix", "ccc"):
        assert needle in text
    assert r.summary()["n"] == 5
