"""Self-supervised pre-training of the encoders + fusion (config section `pretrain`).

SimCLR / SCARF form on frozen features: each row of the labelled training split and the
unlabelled pool is seen twice per step, each view noised by train/augment.py (modality dropout,
frame masking, feature dropout, Gaussian mixing; padding untouched). The model's fused embedding
(JointModel.embed, (B, W)) goes through a small projection head (W -> H -> P) and NT-Xent pulls
the two views of a row together against the batch's other 2B - 2 views. The projection head is
dropped afterwards; only the encoders and fusion (network.BACKBONE_PREFIXES) are kept, as a
"backbone" checkpoint that the pipeline's teachers and students start from (their task adapters,
cross-task attention and heads start from their own seed).

Imports no Ray and no MLflow: the pipeline passes `on_epoch` to log each epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from meiju_ray.config import ExperimentConfig
from meiju_ray.data.batching import iter_batches, to_device
from meiju_ray.data.layout import UNLABELED
from meiju_ray.data.packing import PackedSplit, load_split
from meiju_ray.model.losses import nt_xent
from meiju_ray.model.network import BACKBONE_PREFIXES, build_model
from meiju_ray.train import checkpoint
from meiju_ray.train.augment import augment_batch
from meiju_ray.train.engine import resolve_device, seed_everything, set_threads
from meiju_ray.train.local import capped_pool

log = logging.getLogger("meiju_ray")
BACKBONE = "backbone"  # meta.json "init" of a pre-trained checkpoint: load its keys, keep the rest


def is_active(cfg: ExperimentConfig) -> bool:
    return cfg.pretrain.epochs > 0


def pretrain_rows(cfg: ExperimentConfig) -> PackedSplit:
    """The rows pre-training sees: the labelled training split, plus the unlabelled pool
    (pretrain.pool; at most pseudo.max_rows of it, drawn as online consistency draws it)."""
    progress = lambda msg: log.info(msg)  # noqa: E731
    parts = [load_split(cfg.data, cfg.data.train_split, progress)]
    if cfg.pretrain.pool:
        parts.append(capped_pool(cfg, load_split(cfg.data, UNLABELED, progress)))
    return PackedSplit.concat(parts)


def projection_head(width: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))


def pretrain_backbone(
    cfg: ExperimentConfig,
    rows: PackedSplit,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train encoders + fusion with NT-Xent between two noised views of each row of `rows`.
    Returns the backbone's state_dict (CPU tensors, BACKBONE_PREFIXES keys only) and the
    per-epoch history [{"epoch", "pretrain_loss", "seconds"}]."""
    p = cfg.pretrain
    if len(rows) < 2:
        raise ValueError(f"pretrain: needs at least 2 rows to contrast, got {len(rows)}")
    seed_everything(cfg.seed)
    set_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg).to(device)
    width = len(cfg.data.modalities) * cfg.model.hidden * (1 if model.shared else 2)  # embed()
    head = projection_head(width, cfg.model.hidden, p.projection_dim).to(device)
    params = [*model.encoders.parameters(), *model.fusions.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=cfg.train.weight_decay)
    noise = dataclasses.replace(p.noise, apply_to="all")
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(1, p.epochs + 1):
        model.train()
        head.train()
        total, steps = 0.0, 0
        batches = iter_batches(
            rows,
            p.batch_size,
            shuffle=True,
            seed=cfg.seed + epoch,
            bucket_by_length=cfg.train.bucket_by_length,
        )
        for batch in batches:
            if batch["weight"].shape[0] < 2:  # a last batch of one row has no negative
                continue
            batch = to_device(batch, device)
            z1 = head(model.embed(augment_batch(batch, noise, generator)))
            z2 = head(model.embed(augment_batch(batch, noise, generator)))
            loss = nt_xent(z1, z2, p.temperature)
            if not bool(torch.isfinite(loss)):
                raise ValueError(
                    f"pretrain: non-finite NT-Xent loss at epoch {epoch}; lower pretrain.lr "
                    f"({p.lr}) or raise pretrain.temperature ({p.temperature})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        entry = {
            "epoch": epoch,
            "pretrain_loss": total / max(1, steps),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(entry)
        log.info(
            "pretrain epoch %d/%d: NT-Xent %.4f (%.0f s)",
            epoch,
            p.epochs,
            entry["pretrain_loss"],
            entry["seconds"],
        )
        if on_epoch:  # 0-based, as the training engine counts
            on_epoch(epoch - 1, {"pretrain_loss": entry["pretrain_loss"]})
    state = {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if k.startswith(BACKBONE_PREFIXES)
    }
    return state, history


def run_pretrain(
    cfg: ExperimentConfig,
    out: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict:
    """Pre-train on pretrain_rows(cfg) and write the backbone checkpoint <out>/checkpoint (its
    meta.json says init=backbone). Returns {"rows", "epochs", "loss_first", "loss_last",
    "seconds", "checkpoint"}."""
    rows = pretrain_rows(cfg)
    log.info(
        "pretrain: %d rows (%s), %d epochs, batch %d, T=%g",
        len(rows),
        "labelled + pool" if cfg.pretrain.pool else "labelled only",
        cfg.pretrain.epochs,
        cfg.pretrain.batch_size,
        cfg.pretrain.temperature,
    )
    state, history = pretrain_backbone(cfg, rows, on_epoch)
    result = {
        "rows": len(rows),
        "epochs": len(history),
        "loss_first": history[0]["pretrain_loss"],
        "loss_last": history[-1]["pretrain_loss"],
        "seconds": history[-1]["seconds"],
    }
    ckpt = checkpoint.save(Path(out) / "checkpoint", state, cfg, {"init": BACKBONE, **result})
    return {**result, "checkpoint": str(ckpt)}
