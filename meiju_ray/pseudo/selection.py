"""Pseudo-label selection on teacher probabilities (docs: paper.md §5-6). Pure numpy.

Rules (`PseudoLabelConfig.rule`), then an optional emotion-intent consistency filter:
    per_task   conf >= threshold, each task on its own (the winner's recipe at 0.99)
    joint      both tasks past the bar, or neither
    classwise  a hand-set bar per class (`class_thresholds`)
    topk       the k most confident rows of each predicted class
    adaptive   FlexMatch-style class bars: threshold * M(beta_c), beta_c = how many rows the teacher
               is confident about in class c relative to the best-learnt class, M(x) = x / (2 - x),
               never below min_confidence; classes the teacher is unsure of get a lower bar, so
               minority classes get labels
    quantile   per predicted class, the rows at or above that class's `quantile` of confidence
Calibration happens before `select`: fit a temperature on validation logits with
`fit_temperature`, then `apply_temperature` to the unlabelled probabilities. `pseudo.align`
first moves the teacher's pool distribution to the labelled class prior (distribution alignment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meiju_ray.config import PseudoLabelConfig
from meiju_ray.labels import MISSING_ID


@dataclass
class Selection:
    emotion: np.ndarray  # (N,) int64 chosen pseudo label or -1 (not kept for this task)
    intent: np.ndarray  # (N,) int64 or -1
    selected: np.ndarray  # (N,) bool: row kept for at least one task
    weight: np.ndarray  # (N,) float32 sample weight (0 for rows not selected)
    emo_conf: np.ndarray  # (N,) float32 max emotion prob (after calibration)
    int_conf: np.ndarray  # (N,) float32
    emo_pred: np.ndarray  # (N,) int64 argmax emotion
    int_pred: np.ndarray  # (N,) int64 argmax intent
    rejected: np.ndarray | None = None  # (N,) bool: both labels dropped by the consistency filter
    emo_probs: np.ndarray | None = None  # (N, C_e) the probabilities selected on (after alignment)
    int_probs: np.ndarray | None = None  # (N, C_i)


def _check_probs(probs: Any, name: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(probs)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, C) array, got shape {arr.shape}")
    if arr.shape[1] != n_classes:
        raise ValueError(f"{name}: has {arr.shape[1]} classes but the label list has {n_classes}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _bars(task: str, pred: np.ndarray, labels: Sequence[str], cfg: PseudoLabelConfig) -> np.ndarray:
    """(N,) float: the threshold of each row's predicted class (classwise rule)."""
    table = cfg.class_thresholds.get(task, {})
    unknown = sorted(set(table) - set(labels))
    if unknown:
        raise ValueError(f"class_thresholds.{task}: unknown label(s) {unknown}")
    per_class = np.array([float(table.get(lab, cfg.threshold)) for lab in labels])  # (C,)
    return per_class[pred]


def _topk_mask(pred: np.ndarray, conf: np.ndarray, k: int, min_conf: float) -> np.ndarray:
    """(N,) bool: the k most confident rows of each predicted class with conf >= min_conf."""
    keep = np.zeros(pred.shape[0], dtype=bool)
    order = np.argsort(-conf, kind="stable")  # most confident first, ties by row order
    for c in np.unique(pred):
        rows = order[(pred[order] == c) & (conf[order] >= min_conf)]
        keep[rows[:k]] = True
    return keep


def class_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) label frequencies of the rows with a label, smoothed by one count per class."""
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64) + 1.0
    return counts / counts.sum()


def align_distribution(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Distribution alignment (ReMixMatch): p_i * prior / mean_i(p), renormalised per row, so the
    pool's mean prediction moves to the labelled class prior. (N, C) -> (N, C), rows sum to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    mean = probs.mean(axis=0).clip(1e-12)  # (C,)
    aligned = probs * (np.asarray(prior, dtype=np.float64) / mean)[None, :]
    return aligned / aligned.sum(axis=1, keepdims=True).clip(1e-12)


def adaptive_bars(
    pred: np.ndarray, conf: np.ndarray, threshold: float, n_classes: int, floor: float = 0.0
) -> np.ndarray:
    """(C,) FlexMatch class bars: max(floor, threshold * M(beta_c)), beta_c = sigma_c / max_c
    sigma_c,
    sigma_c = rows predicted c with conf >= threshold, M(x) = x / (2 - x). The best-learnt class
    keeps `threshold`; a class the teacher is rarely sure of gets a lower bar (down to `floor`)."""
    confident = conf >= threshold
    sigma = np.bincount(pred[confident], minlength=n_classes).astype(np.float64)  # (C,)
    beta = sigma / max(sigma.max(), 1.0)
    return np.maximum(floor, threshold * beta / (2.0 - beta))


def quantile_mask(pred: np.ndarray, conf: np.ndarray, q: float, min_conf: float) -> np.ndarray:
    """(N,) bool: per predicted class, rows whose confidence is at least that class's q-quantile
    (and at least min_conf)."""
    keep = np.zeros(pred.shape[0], dtype=bool)
    for c in np.unique(pred):
        rows = pred == c
        keep |= rows & (conf >= np.quantile(conf[rows], q)) & (conf >= min_conf)
    return keep


def select(
    emo_probs: np.ndarray,
    int_probs: np.ndarray,
    cfg: PseudoLabelConfig,
    emotion_labels: Sequence[str],
    intent_labels: Sequence[str],
    allowed_pairs: np.ndarray | None = None,
    priors: dict[str, np.ndarray] | None = None,
) -> Selection:
    """Choose pseudo labels from (calibrated) probabilities (N, C_emo) and (N, C_int).
    `priors` {"emotion": (C_e,), "intent": (C_i,)}: labelled class priors, needed for
        pseudo.align."""
    emo = _check_probs(emo_probs, "emo_probs", len(emotion_labels))
    itn = _check_probs(int_probs, "int_probs", len(intent_labels))
    if emo.shape[0] != itn.shape[0]:
        raise ValueError(f"emo_probs has {emo.shape[0]} rows but int_probs has {itn.shape[0]}")
    if cfg.align:
        if priors is None:
            raise ValueError("pseudo.align=true needs the labelled class priors (see class_prior)")
        emo = align_distribution(emo, priors["emotion"]).astype(emo.dtype)
        itn = align_distribution(itn, priors["intent"]).astype(itn.dtype)
    if cfg.consistency:
        if allowed_pairs is None:
            raise ValueError("pseudo.consistency=True needs allowed_pairs (see allowed_pairs_from)")
        allowed_pairs = np.asarray(allowed_pairs, dtype=bool)
        if allowed_pairs.shape != (len(emotion_labels), len(intent_labels)):
            raise ValueError(
                f"allowed_pairs: expected shape {(len(emotion_labels), len(intent_labels))}, "
                f"got {allowed_pairs.shape}"
            )
    n = emo.shape[0]
    emo_pred, int_pred = (
        emo.argmax(axis=1).astype(np.int64),
        itn.argmax(axis=1).astype(np.int64),
    )  # (N,)
    # (N,) confidences in the input's own float dtype, so a bar equal to a prob compares equal
    emo_conf, int_conf = emo.max(axis=1), itn.max(axis=1)
    bar_e, bar_i = emo_conf.dtype.type(cfg.threshold), int_conf.dtype.type(cfg.threshold)

    if cfg.rule == "per_task":
        keep_e, keep_i = emo_conf >= bar_e, int_conf >= bar_i
    elif cfg.rule == "joint":
        keep_e = keep_i = (emo_conf >= bar_e) & (int_conf >= bar_i)
    elif cfg.rule == "classwise":
        keep_e = emo_conf >= _bars("emotion", emo_pred, emotion_labels, cfg).astype(emo_conf.dtype)
        keep_i = int_conf >= _bars("intent", int_pred, intent_labels, cfg).astype(int_conf.dtype)
    elif cfg.rule == "adaptive":
        bars_e = adaptive_bars(
            emo_pred, emo_conf, cfg.threshold, len(emotion_labels), cfg.min_confidence
        )
        bars_i = adaptive_bars(
            int_pred, int_conf, cfg.threshold, len(intent_labels), cfg.min_confidence
        )
        keep_e = emo_conf >= bars_e[emo_pred].astype(emo_conf.dtype)
        keep_i = int_conf >= bars_i[int_pred].astype(int_conf.dtype)
    elif cfg.rule == "quantile":
        keep_e = quantile_mask(emo_pred, emo_conf, cfg.quantile, cfg.min_confidence)
        keep_i = quantile_mask(int_pred, int_conf, cfg.quantile, cfg.min_confidence)
    else:  # topk
        keep_e = _topk_mask(
            emo_pred, emo_conf, cfg.topk_per_class, emo_conf.dtype.type(cfg.min_confidence)
        )
        keep_i = _topk_mask(
            int_pred, int_conf, cfg.topk_per_class, int_conf.dtype.type(cfg.min_confidence)
        )

    rejected = np.zeros(n, dtype=bool)
    if cfg.consistency and n:
        both = keep_e & keep_i
        rejected = both & ~allowed_pairs[emo_pred, int_pred]
        keep_e, keep_i = keep_e & ~rejected, keep_i & ~rejected

    selected = keep_e | keep_i
    weight = np.zeros(n, dtype=np.float64)
    if cfg.weighting == "constant":
        weight[selected] = cfg.weight
    else:  # confidence: cfg.weight * mean confidence of the kept task(s)
        e64, i64 = emo_conf.astype(np.float64), int_conf.astype(np.float64)
        total = np.where(keep_e, e64, 0.0) + np.where(keep_i, i64, 0.0)  # (N,)
        count = keep_e.astype(np.int64) + keep_i.astype(np.int64)
        weight[selected] = cfg.weight * total[selected] / count[selected]
    return Selection(
        emotion=np.where(keep_e, emo_pred, MISSING_ID).astype(np.int64),
        intent=np.where(keep_i, int_pred, MISSING_ID).astype(np.int64),
        selected=selected,
        weight=weight.astype(np.float32),
        emo_conf=emo_conf.astype(np.float32),
        int_conf=int_conf.astype(np.float32),
        emo_pred=emo_pred,
        int_pred=int_pred,
        rejected=rejected,
        emo_probs=emo,
        int_probs=itn,
    )


def allowed_pairs_from(
    emotion: np.ndarray, intent: np.ndarray, n_emo: int, n_int: int
) -> np.ndarray:
    """(n_emo, n_int) bool: pairs seen in labelled rows (rows with -1 in either task ignored)."""
    e, i = np.asarray(emotion).reshape(-1), np.asarray(intent).reshape(-1)
    if e.shape != i.shape:
        raise ValueError(f"emotion has {e.shape[0]} rows but intent has {i.shape[0]}")
    both = (e >= 0) & (i >= 0)
    e, i = e[both].astype(np.int64), i[both].astype(np.int64)
    if (e >= n_emo).any() or (i >= n_int).any():
        raise ValueError(f"label ids out of range for n_emo={n_emo}, n_int={n_int}")
    pairs = np.zeros((n_emo, n_int), dtype=bool)
    pairs[e, i] = True
    return pairs


def _counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    kept = labels[labels >= 0]
    return {name: int((kept == c).sum()) for c, name in enumerate(names)}


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _accuracy(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float | None:
    """Accuracy of pred on rows in mask that have a true label (>= 0); None if no such row."""
    rows = mask & (true >= 0)
    return float((pred[rows] == true[rows]).mean()) if rows.any() else None


def summary(
    sel: Selection,
    emotion_labels: Sequence[str],
    intent_labels: Sequence[str],
    true_emotion: np.ndarray | None = None,
    true_intent: np.ndarray | None = None,
) -> dict[str, Any]:
    """JSON-able counts, rates, mean confidences and (with hidden true labels) accuracies."""
    n = int(sel.selected.shape[0])
    keep_e, keep_i = sel.emotion >= 0, sel.intent >= 0
    n_sel = int(sel.selected.sum())
    out: dict[str, Any] = {
        "n_rows": n,
        "n_selected": n_sel,
        "selection_rate": n_sel / n if n else 0.0,
        "n_emotion_kept": int(keep_e.sum()),
        "n_intent_kept": int(keep_i.sum()),
        "n_both_kept": int((keep_e & keep_i).sum()),
        "rejected_inconsistent": int(sel.rejected.sum()) if sel.rejected is not None else 0,
        "emotion_counts": _counts(sel.emotion, emotion_labels),
        "intent_counts": _counts(sel.intent, intent_labels),
        "mean_emotion_conf": _mean(sel.emo_conf[keep_e]),
        "mean_intent_conf": _mean(sel.int_conf[keep_i]),
        "mean_weight": _mean(sel.weight[sel.selected]),
    }
    for task, true, kept, pred in (
        ("emotion", true_emotion, sel.emotion, sel.emo_pred),
        ("intent", true_intent, sel.intent, sel.int_pred),
    ):
        if true is None:
            continue
        true = np.asarray(true).reshape(-1)
        if true.shape[0] != n:
            raise ValueError(f"true_{task} has {true.shape[0]} rows but the selection has {n}")
        out[f"{task}_accuracy"] = _accuracy(kept, true, kept >= 0)
        out[f"{task}_accuracy_all"] = _accuracy(pred, true, np.ones(n, dtype=bool))
        names = emotion_labels if task == "emotion" else intent_labels
        out[f"{task}_precision"] = {  # per kept class: share of its pseudo-labels that are right
            name: _accuracy(kept, true, kept == c) for c, name in enumerate(names)
        }
    return out


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(logits / T) at the labels; logits (N, C), labels (N,)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))  # (N,)
    return float((lse - z[np.arange(z.shape[0]), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Scalar T in [0.05, 20] minimising NLL on rows with label >= 0 (1.0 if none)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if z.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (N, C) array, got shape {z.shape}")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {z.shape[0]} rows but labels has {y.shape[0]}")
    rows = y >= 0
    if not rows.any():
        return 1.0
    z, y = z[rows], y[rows].astype(np.int64)
    if not np.all(np.isfinite(z)):
        raise ValueError("logits: contains NaN or infinite values")
    if (y >= z.shape[1]).any():
        raise ValueError(f"labels: ids must be < {z.shape[1]} (the number of classes)")
    lo, hi = np.log(0.05), np.log(20.0)
    grid = np.linspace(lo, hi, 41)  # dense grid on log T, then golden-section around the best
    losses = [_nll(z, y, float(np.exp(t))) for t in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(z, y, float(np.exp(c))), _nll(z, y, float(np.exp(d)))
    for _ in range(30):  # bracket shrinks by 0.618^30 ~ 5e-7
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(z, y, float(np.exp(c)))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(z, y, float(np.exp(d)))
    return float(np.exp((a + b) / 2.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T) along the last axis; probs clipped at 1e-12."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("probs: contains NaN or infinite values")
    z = np.log(np.clip(p, 1e-12, None)) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
