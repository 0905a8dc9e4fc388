"""Feature-level noise for a noisy student: the student sees perturbed frames, the teacher clean
ones.

All four perturbations act on real frames only (`<M>_mask` True); padded frames stay exactly zero,
so what sits in the padding never changes a model's output. With every strength at 0 the batch is
returned unchanged (the same object), so supervised training is bit-identical without noise.

    modality_dropout p   each row loses each modality with probability p (its real frames become 0;
                         a row always keeps at least one modality)
    frame_mask f         a fraction f of each row's real frames is set to 0 (at least one frame
        kept)
    feature_dropout p    element-wise dropout on real frames, kept values scaled by 1 / (1 - p)
    gaussian_mix a       x -> sqrt(1 - a) * x + sqrt(a) * eps, eps ~ N(0, std of x per feature)
"""

from __future__ import annotations

import dataclasses

import torch

from meiju_ray.config import AugmentConfig
from meiju_ray.data.packing import PackedSplit

Batch = dict[str, torch.Tensor]


def for_run(cfg: AugmentConfig, train: PackedSplit) -> AugmentConfig | None:
    """The noise a run training on `train` uses: apply_to=students noises every row of a run that
    trains on pool rows (a student) and nothing in a supervised run (a teacher, `train`)."""
    if cfg.apply_to != "students":
        return cfg
    return dataclasses.replace(cfg, apply_to="all") if train.is_pseudo().any() else None


def is_active(cfg: AugmentConfig) -> bool:
    return any(
        v > 0 for v in (cfg.modality_dropout, cfg.frame_mask, cfg.feature_dropout, cfg.gaussian_mix)
    )


def modality_names(batch: Batch) -> list[str]:
    return [k[: -len("_mask")] for k in batch if k.endswith("_mask")]


def augment_batch(
    batch: Batch, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> Batch:
    """A copy of `batch` with noise on the rows `cfg.apply_to` selects (all, or pseudo-labelled)."""
    if not is_active(cfg):
        return batch
    out = dict(batch)
    names = modality_names(batch)
    first = batch[names[0]]
    n_rows = first.shape[0]
    if cfg.apply_to == "pseudo":
        rows = batch["pseudo"].to(first.device).bool()
    else:
        rows = torch.ones(n_rows, dtype=torch.bool, device=first.device)
    if not bool(rows.any()):
        return batch

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(first.device)

    keep_modality = torch.ones(n_rows, len(names), dtype=torch.bool, device=first.device)
    if cfg.modality_dropout > 0 and len(names) > 1:
        keep_modality = uniform(n_rows, len(names)) >= cfg.modality_dropout
        # a row that would lose every modality keeps one of them (chosen at random)
        none_left = ~keep_modality.any(1)
        pick = (uniform(n_rows) * len(names)).long().clamp_max(len(names) - 1)
        keep_modality[none_left, pick[none_left]] = True
    for j, name in enumerate(names):
        x, mask = batch[name], batch[f"{name}_mask"].to(first.device)
        real = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1): 1 on real frames
        noisy = x
        if cfg.gaussian_mix > 0:
            count = real.sum((0, 1)).clamp_min(1.0)  # per feature over real frames
            mean = (x * real).sum((0, 1)) / count
            std = (((x - mean) ** 2) * real).sum((0, 1)).div(count).sqrt()
            eps = torch.randn(x.shape, generator=generator).to(x.device) * std
            noisy = (1 - cfg.gaussian_mix) ** 0.5 * noisy + cfg.gaussian_mix**0.5 * eps
        if cfg.feature_dropout > 0:
            kept = (uniform(*x.shape) >= cfg.feature_dropout).to(x.dtype)
            noisy = noisy * kept / (1 - cfg.feature_dropout)
        frame_keep = torch.ones(mask.shape, dtype=x.dtype, device=x.device)
        if cfg.frame_mask > 0:
            frame_keep = (uniform(*mask.shape) >= cfg.frame_mask).to(x.dtype)
            # never mask every real frame of a row: its first real frame stays
            frame_keep[:, 0] = 1.0
        row_keep = keep_modality[:, j].to(x.dtype)[:, None]  # (B, 1)
        noisy = noisy * (frame_keep * row_keep).unsqueeze(-1)
        noisy = noisy * real  # padding stays exactly 0
        out[name] = torch.where(rows[:, None, None], noisy, x)
    return out
