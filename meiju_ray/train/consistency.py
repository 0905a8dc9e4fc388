"""Online consistency with an EMA teacher (FixMatch / UDA / SoftMatch on feature-level views).

Per training step, beside the labelled batch, one batch of unlabelled pool rows:

    teacher = EMA of the model (eval mode, no grad) on the clean view -> probs q (B, C) per task
    target  = sharpen(q, T) (soft, UDA)  or  one-hot argmax q (hard, FixMatch)
    w_i     = mask: 1[max q_i >= threshold]
              softmatch: 1 if max q_i >= mu, else exp(-(max q_i - mu)^2 / (2 var)),
                         mu / var running mean / variance of max q over pool batches
    loss    = sum_i w_i * CE(target_i, model(strong view)_i) / B     (per task, summed)

then, after the optimizer step, teacher <- decay * teacher + (1 - decay) * model. Equations after
USB's fixmatch / softmatch (read, not imported). Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from meiju_ray.config import ConsistencyConfig, ExperimentConfig

TASK_HEADS = {"emotion": "emotion", "intent": "intent"}  # task -> model output used


def is_active(cfg: ConsistencyConfig | None) -> bool:
    return cfg is not None and cfg.weight > 0


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of the (unwrapped) model that follows it by EMA."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, model: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * model, parameters and float buffers."""
    for t, s in zip(teacher.parameters(), model.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), model.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        else:
            t.copy_(s)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """probs ** (1/T), renormalised per row (T < 1 sharpens, T = 1 is the identity)."""
    if temperature == 1.0:
        return probs
    powered = probs.clamp_min(1e-12) ** (1.0 / temperature)
    return powered / powered.sum(-1, keepdim=True)


@dataclass
class SoftMatchState:
    """Running mean / variance of the teacher's max confidence per task (SoftMatch, m = 0.999).
    Starts at the uniform distribution's confidence with variance 1 (every row weighs ~1)."""

    momentum: float = 0.999
    mean: dict[str, float] = field(default_factory=dict)
    var: dict[str, float] = field(default_factory=dict)

    def update(self, task: str, confidence: torch.Tensor, n_classes: int) -> tuple[float, float]:
        m = self.momentum
        mean = self.mean.get(task, 1.0 / n_classes)
        var = self.var.get(task, 1.0)
        batch_mean = float(confidence.mean())
        batch_var = float(confidence.var(unbiased=True)) if confidence.numel() > 1 else 0.0
        self.mean[task] = m * mean + (1 - m) * batch_mean
        self.var[task] = m * var + (1 - m) * batch_var
        return self.mean[task], self.var[task]


def row_weights(
    confidence: torch.Tensor,
    cfg: ConsistencyConfig,
    state: SoftMatchState | None = None,
    task: str = "",
    n_classes: int = 2,
) -> torch.Tensor:
    """(B,) weight of each pool row's consistency term from the teacher's max confidence."""
    if cfg.weighting == "mask":
        return (confidence >= cfg.threshold).to(confidence.dtype)
    state = state if state is not None else SoftMatchState()
    mean, var = state.update(task, confidence, n_classes)
    fall_off = torch.exp(-((confidence - mean) ** 2) / (2 * max(var, 1e-12)))
    return torch.where(confidence >= mean, torch.ones_like(confidence), fall_off)


def consistency_loss(
    student: dict[str, torch.Tensor],
    teacher_probs: dict[str, torch.Tensor],
    cfg: ConsistencyConfig,
    state: SoftMatchState | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over tasks of mean_i w_i * CE(target_i, student_i); parts: loss and mean weight per
    task."""
    total = next(iter(student.values())).sum() * 0.0
    parts: dict[str, float] = {}
    for task, head in TASK_HEADS.items():
        q = teacher_probs[task]
        confidence, hard = q.max(-1)
        w = row_weights(confidence, cfg, state, task, q.shape[-1])
        log_p = F.log_softmax(student[head].float(), -1)
        if cfg.targets == "hard":
            ce = F.nll_loss(log_p, hard, reduction="none")
        else:
            ce = -(sharpen(q, cfg.temperature) * log_p).sum(-1)
        term = (w * ce).mean()
        total = total + term
        parts[f"cons_{task}"] = float(term.detach())
        parts[f"cons_{task}_weight"] = float(w.mean())
    return total, parts


@torch.no_grad()
def teacher_probs(teacher: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    outputs = teacher(batch)
    return {task: torch.softmax(outputs[head].float(), -1) for task, head in TASK_HEADS.items()}


def ramp(epoch: int, cfg: ConsistencyConfig) -> float:
    """Linear warm-up of the consistency weight: epoch 0 -> 1/(w+1), ..., >= w -> 1."""
    return cfg.weight * min(1.0, (epoch + 1) / (cfg.warmup_epochs + 1))


def teacher_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a pipeline's or sweep's teacher trains with: online consistency is a student
    method unless consistency.in_teacher (a plain `train` uses cfg as it is)."""
    if cfg.consistency.in_teacher:
        return cfg
    return dataclasses.replace(cfg, consistency=dataclasses.replace(cfg.consistency, weight=0.0))
