"""Joint loss: CE per task on the main heads + weighted CE on the auxiliary heads.

Per-sample weights (pseudo-labelled rows carry their own), rows with label -1 are masked out of
that task's hard loss, optional class weights and label smoothing. Rows with a soft target (a
teacher distribution q) add -sum_c q_c log p_c, i.e. KL(q || p) up to the constant entropy of q.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from meiju_ray.config import LossConfig


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (n_classes * count_c), as sklearn's 'balanced'; 0 for absent
    classes."""
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    class_weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
    soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over target-carrying rows of weight_i * CE_i. Rows with target -1 and no soft target
    count for nothing.

    `soft` (B, C): target distributions for rows whose hard target is -1 (a row of zeros = none);
    their CE is against the distribution. The mean divides by the sum of the sample weights of the
    rows that count, so down-weighted pseudo-labels also count less in the normaliser. Returns 0
    (with grad) if no row has a target.
    """
    total = logits.sum() * 0.0
    norm = logits.new_zeros(())
    valid = target >= 0
    if bool(valid.any()):
        hard = target[valid]
        ce = F.cross_entropy(logits[valid], hard, label_smoothing=smoothing, reduction="none")
        w = weight[valid]
        if class_weight is not None:
            w = w * class_weight[hard]
        total, norm = total + (w * ce).sum(), norm + w.sum()
    if soft is not None:
        has_soft = ~valid & (soft.sum(-1) > 0)
        if bool(has_soft.any()):
            log_p = F.log_softmax(logits[has_soft].float(), dim=-1)
            ce = -(soft[has_soft] * log_p).sum(-1)
            w = weight[has_soft]
            total, norm = total + (w * ce).sum(), norm + w.sum()
    if not bool(norm > 0):
        return total
    return total / norm.clamp_min(1e-12)


def joint_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    cfg: LossConfig,
    class_weights: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total = w_e*CE(emotion) + w_i*CE(intent_main) + aux*(CE(emotion_aux) + CE(intent_aux)).

    The fused intent output is a mix of intent_main and intent_aux, so both are trained directly.
    """
    cw = class_weights or {}
    w = batch["weight"]

    def ce(head: str, task: str) -> torch.Tensor:
        return weighted_ce(
            outputs[head],
            batch[task],
            w,
            cw.get(task),
            cfg.label_smoothing,
            batch.get(f"{task}_soft"),
        )

    parts = {
        "emotion": ce("emotion", "emotion"),
        "intent": ce("intent_main", "intent"),
        "emotion_aux": ce("emotion_aux", "emotion"),
        "intent_aux": ce("intent_aux", "intent"),
    }
    if "intent" in outputs and outputs["intent"] is not outputs["intent_main"]:
        parts["intent_fused"] = ce("intent", "intent")
    total = (
        cfg.emotion_weight * parts["emotion"]
        + cfg.intent_weight * parts["intent"]
        + cfg.aux_weight * (parts["emotion_aux"] + parts["intent_aux"])
    )
    if "intent_fused" in parts:
        total = total + cfg.intent_weight * parts["intent_fused"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: z1, z2 (B, P) are two views of the same B rows. Each of the 2B views is
    classified among the other 2B - 1 by cosine similarity / temperature, its own other view
    being the right answer; the mean cross-entropy over the 2B views."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, P)
    sim = (z @ z.T) / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)
