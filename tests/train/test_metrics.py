"""Challenge metrics: weighted / micro F1, the joint harmonic mean, unlabelled rows, confusion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meiju_ray.train.metrics import confusion, joint_score, majority_scores, scores, task_f1


def hand_weighted_f1(y_true: list[int], y_pred: list[int]) -> float:
    """Per-class precision/recall/F1 by counting, weighted by true support."""
    total = 0.0
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * sum(t == c for t in y_true)
    return total / len(y_true)


Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 0, 2, 4]  # class 4 is predicted but never true


def test_weighted_f1_hand_computed():
    # by hand: class 0: P=2/3 R=2/3 F=2/3 (n=3); class 1: P=1/2 R=1/2 F=1/2 (n=2);
    # class 2: P=3/4 R=3/4 F=3/4 (n=4); class 3: F=0 (n=1); class 4: no support
    expected = (3 * 2 / 3 + 2 * 1 / 2 + 4 * 3 / 4 + 1 * 0) / 10
    assert expected == pytest.approx(0.6)
    assert hand_weighted_f1(Y_TRUE, Y_PRED) == pytest.approx(expected)
    assert task_f1(np.array(Y_TRUE), np.array(Y_PRED), track=1) == pytest.approx(expected)


def test_weighted_f1_unequal_precision_recall():
    y_true = [0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 1, 1]
    # class 0: P=1 R=1/2 F=2/3 (n=4); class 1: P=1/2 R=1 F=2/3 (n=2) -> 2/3
    assert task_f1(y_true, y_pred) == pytest.approx(2 / 3)
    assert task_f1(y_true, y_pred) == pytest.approx(hand_weighted_f1(y_true, y_pred))


def test_micro_f1_is_accuracy_for_track_2():
    acc = sum(t == p for t, p in zip(Y_TRUE, Y_PRED)) / len(Y_TRUE)
    assert acc == pytest.approx(0.6)
    assert task_f1(Y_TRUE, Y_PRED, track=2) == pytest.approx(acc)
    y_true, y_pred = [0, 0, 0, 1], [0, 0, 0, 0]
    assert task_f1(y_true, y_pred, track=2) == pytest.approx(3 / 4)
    # the tracks really differ here: weighted F1 = 3/4 * F1(class 0) = 3/4 * 6/7
    assert task_f1(y_true, y_pred, track=1) == pytest.approx(3 / 4 * 6 / 7)


def test_unlabelled_rows_are_ignored():
    y_true = np.array(Y_TRUE + [-1, -1, -1])
    y_pred = np.array(Y_PRED + [5, 0, 3])
    assert task_f1(y_true, y_pred) == pytest.approx(0.6)
    assert task_f1(y_true, y_pred, track=2) == pytest.approx(0.6)
    assert math.isnan(task_f1(np.array([-1, -1]), np.array([0, 1])))


def test_joint_score():
    assert joint_score(0.6, 0.3) == pytest.approx(2 * 0.6 * 0.3 / (0.9 + 1e-6))
    assert joint_score(0.6, 0.3) == pytest.approx(0.4, abs=1e-6)
    assert joint_score(0.5, 0.5) == pytest.approx(0.5, abs=1e-6)
    assert joint_score(0.0, 0.0) == 0.0  # the epsilon avoids 0/0
    assert joint_score(0.8, 0.0) == 0.0  # harmonic: one zero task zeroes the joint
    assert joint_score(float("nan"), 0.7) == 0.7
    assert joint_score(0.4, float("nan")) == 0.4
    assert math.isnan(joint_score(float("nan"), float("nan")))


def test_scores_bundle():
    got = scores(Y_TRUE, Y_PRED, [1, 1, 0, 0], [1, 0, 0, 0], track=2)
    assert got["emo"] == pytest.approx(0.6) and got["int"] == pytest.approx(0.75)
    assert got["joint"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75 + 1e-6))
    # intent entirely unlabelled (e.g. a MELD-style split): joint is the emotion score
    got = scores(Y_TRUE, Y_PRED, [-1] * 10, [0] * 10)
    assert math.isnan(got["int"]) and got["joint"] == pytest.approx(got["emo"])


def test_confusion_counts():
    y_true = np.array([0, 0, 1, 2, 2, 2, -1, -1])
    y_pred = np.array([0, 1, 1, 2, 0, 2, 3, 0])
    got = confusion(y_true, y_pred, 4)
    expected = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == 6  # the two unlabelled rows are not counted


def test_majority_scores():
    train_emo = [2, 2, 2, 1, -1, -1, -1, -1]  # -1 rows must not make -1 (or 0) the majority
    train_int = [0, 3, 3, 4, 3]
    emo_true = [2, 2, 1, 0]
    int_true = [3, 0, 3, 3, -1]
    got = majority_scores(train_emo, train_int, emo_true, int_true, track=2)
    assert got["emo"] == pytest.approx(0.5)  # predicts 2 everywhere: 2 of 4
    assert got["int"] == pytest.approx(0.75)  # predicts 3 everywhere: 3 of 4 labelled
    assert got["joint"] == pytest.approx(2 * 0.5 * 0.75 / (1.25 + 1e-6))
    got1 = majority_scores(train_emo, train_int, emo_true, int_true, track=1)
    # weighted F1 of "always 2" on [2, 2, 1, 0]: class 2 P=1/2 R=1 F=2/3, support 2 -> (2 * 2/3) / 4
    assert got1["emo"] == pytest.approx(hand_weighted_f1(emo_true, [2] * 4)) == pytest.approx(1 / 3)
