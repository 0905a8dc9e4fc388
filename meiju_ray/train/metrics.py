"""Challenge metrics (docs/baseline.md §5) on integer label ids, via scikit-learn.

Track 1: weighted F1 per task; Track 2: micro F1 (= accuracy). Joint (JRBM) = harmonic mean
2*E*I / (E + I), with the baseline's 1e-6 in the denominator. Rows with label -1 are ignored.
"""

from __future__ import annotations

import numpy as np

# sklearn.metrics is imported inside the functions: it takes ~1.3 s to import, and every process
# that
# loads a model (each Ray Data pseudo-labelling actor, each Ray worker) imports this module.

EPS = 1e-6


def task_f1(y_true: np.ndarray, y_pred: np.ndarray, track: int = 1) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true >= 0
    if not keep.any():
        return float("nan")
    from sklearn.metrics import f1_score

    average = "weighted" if track == 1 else "micro"
    return float(f1_score(y_true[keep], y_pred[keep], average=average, zero_division=0))


def joint_score(emo: float, intent: float) -> float:
    """Harmonic mean; if one task is unlabelled (nan), the other task's score."""
    if np.isnan(emo):
        return intent
    if np.isnan(intent):
        return emo
    return float(2 * emo * intent / (emo + intent + EPS))


def scores(emo_true, emo_pred, int_true, int_pred, track: int = 1) -> dict[str, float]:
    e = task_f1(emo_true, emo_pred, track)
    i = task_f1(int_true, int_pred, track)
    return {"emo": e, "int": i, "joint": joint_score(e, i)}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true label; unlabelled rows ignored."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true >= 0
    if not keep.any():  # a task with no labels (e.g. MELD intent): sklearn refuses empty input
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true[keep], y_pred[keep], labels=list(range(n_classes)))


def majority_scores(train_emo, train_int, emo_true, int_true, track: int = 1) -> dict[str, float]:
    """Scores of always predicting the training majority class of each task (a floor)."""

    def mode(y):
        y = np.asarray(y)
        y = y[y >= 0]
        return int(np.bincount(y).argmax()) if len(y) else 0

    e, i = mode(train_emo), mode(train_int)
    return scores(emo_true, np.full(len(emo_true), e), int_true, np.full(len(int_true), i), track)
