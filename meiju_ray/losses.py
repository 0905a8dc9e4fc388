"""Joint loss: CE per task on the main heads + weighted CE on the auxiliary heads.

Per-sample weights (pseudo-labelled rows carry their own), rows with label -1 are masked out of
that task's loss, optional class weights and label smoothing.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from meiju_ray.config import LossConfig


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (n_classes * count_c), as sklearn's 'balanced'; 0 for absent classes."""
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                class_weight: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over labelled rows of weight_i * CE_i. Rows with target -1 count for nothing.

    The mean divides by the sum of the sample weights of labelled rows, so down-weighted
    pseudo-labels also count less in the normaliser. Returns 0 (with grad) if no row is labelled.
    """
    valid = target >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    target = target[valid]
    ce = F.cross_entropy(logits[valid], target, label_smoothing=smoothing, reduction="none")
    w = weight[valid]
    if class_weight is not None:
        w = w * class_weight[target]
    return (w * ce).sum() / w.sum().clamp_min(1e-12)


def joint_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: LossConfig,
               class_weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total = w_e*CE(emotion) + w_i*CE(intent_main) + aux*(CE(emotion_aux) + CE(intent_aux)).

    The fused intent output is a mix of intent_main and intent_aux, so both are trained directly.
    """
    cw = class_weights or {}
    w = batch["weight"]
    parts = {
        "emotion": weighted_ce(outputs["emotion"], batch["emotion"], w, cw.get("emotion"), cfg.label_smoothing),
        "intent": weighted_ce(outputs["intent_main"], batch["intent"], w, cw.get("intent"), cfg.label_smoothing),
        "emotion_aux": weighted_ce(outputs["emotion_aux"], batch["emotion"], w, cw.get("emotion"), cfg.label_smoothing),
        "intent_aux": weighted_ce(outputs["intent_aux"], batch["intent"], w, cw.get("intent"), cfg.label_smoothing),
    }
    if "intent" in outputs and outputs["intent"] is not outputs["intent_main"]:
        parts["intent_fused"] = weighted_ce(outputs["intent"], batch["intent"], w, cw.get("intent"), cfg.label_smoothing)
    total = cfg.emotion_weight * parts["emotion"] + cfg.intent_weight * parts["intent"] \
        + cfg.aux_weight * (parts["emotion_aux"] + parts["intent_aux"])
    if "intent_fused" in parts:
        total = total + cfg.intent_weight * parts["intent_fused"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
