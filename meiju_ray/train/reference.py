"""A simple reference next to the neural models: logistic regression on pooled features.

Each utterance becomes [mean | max] over its frames per modality (padding never enters), the
features are standardised, and one multinomial logistic regression per task is fit on the
training rows. On a Track-1-sized synthetic world such a model beat the official baseline, so
every pipeline reports it beside the teacher and the student.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from meiju_ray.data.packing import PackedSplit
from meiju_ray.train.metrics import scores


def pooled_features(split: PackedSplit) -> np.ndarray:
    """(N, sum_M 2*D_M): per-modality mean and max over each row's real frames."""
    parts = []
    for name, values in split.values.items():
        starts = split.offsets[name][:-1]
        lens = np.diff(split.offsets[name])[:, None].astype(np.float32)
        parts.append(np.add.reduceat(values, starts, axis=0) / lens)
        parts.append(np.maximum.reduceat(values, starts, axis=0))
    return np.concatenate(parts, axis=1)


def fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, c: float, seed: int
) -> np.ndarray:
    keep = y_train >= 0
    if len(np.unique(y_train[keep])) < 2:
        return np.full(len(x_eval), int(y_train[keep][0]) if keep.any() else 0)
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=300, random_state=seed)
    )
    model.fit(x_train[keep], y_train[keep])
    return model.predict(x_eval)


def logistic_reference(
    train: PackedSplit, val: PackedSplit, track: int = 1, c: float = 0.05, seed: int = 0
) -> dict:
    """Validation emo/int/joint of the pooled-feature logistic regression."""
    t0 = time.time()
    x_train, x_val = pooled_features(train), pooled_features(val)
    emo = fit_predict(x_train, train.emotion, x_val, c, seed)
    intent = fit_predict(x_train, train.intent, x_val, c, seed)
    return {
        **scores(val.emotion, emo, val.intent, intent, track),
        "seconds": round(time.time() - t0, 2),
    }
