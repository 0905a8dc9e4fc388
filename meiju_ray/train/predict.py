"""In-memory prediction: utterance features held in Python -> a DataFrame of labels and
probabilities. The MLflow pyfunc model (tracking.models) and `meiju_ray.predict` both end here.

Features, one utterance per row, in any of these forms:
    pandas.DataFrame   column `id` (optional) + one column per modality name (cfg.data.modalities,
                       e.g. A, V, L) whose cells are [T, D] arrays (numpy or nested lists)
    dict               {"id": [...], "A": [arr, ...], ...} (the same columns)
    list of dicts      [{"id": "u1", "A": arr, ...}, ...]
    PackedSplit        a loaded split (data.packing.load_split)
A 1-D [D] cell is an utterance-level vector (T = 1), as for .npy files. Rows without `id` are named
by their position ("0", "1", ...). The checks are those of a feature file: D must match the model's
dim, T >= 1, finite values; max_len subsamples as in packing.

Output columns, one row per input row in input order:
    id, emotion, emotion_prob, intent, intent_prob     predicted label and its probability
    p_emotion_<label> ..., p_intent_<label> ...        every class's probability
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from meiju_ray.config import ExperimentConfig, ModalityConfig
from meiju_ray.data.batching import iter_batches
from meiju_ray.data.layout import subsample_frames
from meiju_ray.data.packing import PackedSplit
from meiju_ray.train.engine import predict_probs, resolve_device


def _columns(features: Any) -> dict[str, list]:
    """DataFrame / dict of columns / list of row dicts -> {column: list of cells}."""
    if hasattr(features, "to_dict") and hasattr(features, "columns"):  # a pandas DataFrame
        return {str(c): list(features[c]) for c in features.columns}
    if isinstance(features, Mapping):
        return {str(k): list(v) for k, v in features.items()}
    if isinstance(features, Sequence) and all(isinstance(r, Mapping) for r in features):
        keys = list(dict.fromkeys(k for r in features for k in r))
        return {str(k): [r.get(k) for r in features] for k in keys}
    raise TypeError(
        "features must be a pandas DataFrame, a dict of columns, a list of row dicts or a "
        f"PackedSplit, not {type(features).__name__}"
    )


def frames(cell: Any, modality: ModalityConfig, where: str) -> np.ndarray:
    """One utterance's [T, D] float32 frames, checked like a feature file."""
    if cell is None:
        raise ValueError(f"{where}: no features for modality '{modality.name}'")
    try:
        arr = np.asarray(
            [np.asarray(x, dtype=np.float32) for x in cell]
            if isinstance(cell, (list, tuple))
            else cell,
            dtype=np.float32,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: modality '{modality.name}' is not a numeric array: {exc}"
        ) from None
    if arr.ndim == 1 and arr.shape[0] == modality.dim:
        arr = arr[None, :]  # an utterance-level vector is a T=1 sequence
    if arr.ndim != 2 or arr.shape[1] != modality.dim:
        raise ValueError(
            f"{where}: modality '{modality.name}' must be [T, {modality.dim}] (the model's dim), "
            f"got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: modality '{modality.name}' has T=0 frames")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: modality '{modality.name}' contains NaN or Inf values")
    return subsample_frames(arr, modality.max_len)


def features_to_split(features: Any, cfg: ExperimentConfig) -> PackedSplit:
    """Features in memory (module docstring) -> an unlabelled PackedSplit for the model of `cfg`."""
    if isinstance(features, PackedSplit):
        return features
    cols = _columns(features)
    names = [m.name for m in cfg.data.modalities]
    missing = [n for n in names if n not in cols]
    if missing:
        want = ", ".join(f"{m.name} [T, {m.dim}]" for m in cfg.data.modalities)
        raise ValueError(
            f"features have no column for modality {', '.join(map(repr, missing))}; the model "
            f"reads: {want} (has: {', '.join(cols) or 'nothing'})"
        )
    n = len(cols[names[0]])
    ids = [str(i) for i in cols["id"]] if "id" in cols else [str(i) for i in range(n)]
    if any(len(cols[c]) != n for c in names) or len(ids) != n:
        raise ValueError("features: every column must have one cell per utterance")
    if n == 0:
        raise ValueError("features: no utterances to predict")
    values, offsets = {}, {}
    for m in cfg.data.modalities:
        rows = [frames(cell, m, f"utterance {ids[i]!r}") for i, cell in enumerate(cols[m.name])]
        values[m.name] = np.concatenate(rows)
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        offsets[m.name] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return PackedSplit(
        ids,
        np.full(n, -1, np.int64),
        np.full(n, -1, np.int64),
        np.ones(n, np.float32),
        values,
        offsets,
    )


def output_columns(cfg: ExperimentConfig) -> list[str]:
    return (
        ["id", "emotion", "emotion_prob", "intent", "intent_prob"]
        + [f"p_emotion_{label}" for label in cfg.data.emotion_labels]
        + [f"p_intent_{label}" for label in cfg.data.intent_labels]
    )


def predict_features(
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    features: Any,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
):
    """Labels and probabilities for utterances in memory (module docstring): a pandas DataFrame."""
    import pandas as pd

    split = features_to_split(features, cfg)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    probs = predict_probs(model, iter_batches(split, batch_size), dev)
    emo, intent = probs["emotion"], probs["intent"]
    e, i = emo.argmax(1), intent.argmax(1)
    rows = np.arange(len(split))
    table = {
        "id": split.ids,
        "emotion": [cfg.data.emotion_labels[k] for k in e],
        "emotion_prob": emo[rows, e].astype(np.float64),
        "intent": [cfg.data.intent_labels[k] for k in i],
        "intent_prob": intent[rows, i].astype(np.float64),
    }
    for k, label in enumerate(cfg.data.emotion_labels):
        table[f"p_emotion_{label}"] = emo[:, k].astype(np.float64)
    for k, label in enumerate(cfg.data.intent_labels):
        table[f"p_intent_{label}"] = intent[:, k].astype(np.float64)
    return pd.DataFrame(table, columns=output_columns(cfg))


def to_frame(features: Any):
    """Features in any accepted form (module docstring) as the DataFrame the MLflow model takes:
    `id` + one column of [T, D] arrays per modality."""
    import pandas as pd

    if isinstance(features, PackedSplit):
        table = {"id": features.ids}
        for name in features.values:
            table[name] = [features.frames(name, i) for i in range(len(features))]
        return pd.DataFrame(table)
    if hasattr(features, "columns"):
        return features
    return pd.DataFrame(_columns(features))
