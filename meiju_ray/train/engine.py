"""Plain training and evaluation over iterables of batch dicts (local mode and Ray Train alike).

Nothing here knows about Ray or MLflow: callers pass `on_epoch` to report/log each epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from meiju_ray.config import (
    AugmentConfig,
    ConsistencyConfig,
    LossConfig,
    TrainConfig,
    check_device_name,
)
from meiju_ray.data.batching import Batch, to_device
from meiju_ray.model.losses import joint_loss
from meiju_ray.train import consistency as cons
from meiju_ray.train.augment import augment_batch
from meiju_ray.train.metrics import scores


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as given (errors if cuda is absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(check_device_name(name))  # a clear ValueError, e.g. for --device tpu
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available here")
    return device


def set_threads(num_threads: int, processes: int = 1) -> int:
    """Torch intra-op threads so that `processes` processes never oversubscribe the cores.

    Two processes each using all cores made one LSTM forward 50x slower on a 2-core machine.
    """
    if num_threads < 0:
        raise ValueError(f"train.num_threads={num_threads}: expected >= 0 (0 = automatic)")
    n = num_threads or max(1, (os.cpu_count() or 1) // max(1, processes))
    torch.set_num_threads(n)
    return n


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )


def make_scaler(amp: bool, device: torch.device) -> torch.amp.GradScaler:
    """AMP loss scaler: enabled only for amp on cuda; a disabled scaler is a pass-through."""
    return torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """LR multiplier for a 0-based epoch: constant for `constant_epochs`, then decay to ~0."""
    if cfg.schedule == "constant" or epoch < cfg.constant_epochs:
        return 1.0
    decay_epochs = max(1, cfg.epochs - cfg.constant_epochs)
    if (
        cfg.schedule == "linear"
    ):  # the baseline's rule: 1 - max(0, e + 1 - niter) / (niter_decay + 1)
        return 1.0 - max(0, epoch + 1 - cfg.constant_epochs) / (decay_epochs + 1)
    progress = (epoch - cfg.constant_epochs) / decay_epochs
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteLoss(ValueError):
    """Training produced a NaN/Inf loss; `rows` are the batch's split-row indices whose own loss
    is non-finite (empty when no single row is to blame, e.g. a learning rate that diverges)."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def _non_finite_rows(
    model: nn.Module, batch: Batch, loss_cfg: LossConfig, class_weights: dict | None
) -> list[int]:
    """The batch rows whose own forward pass / loss is non-finite (run one at a time)."""
    bad = []
    with torch.no_grad():
        for i in range(int(batch["weight"].shape[0])):
            row = {k: v[i : i + 1] for k, v in batch.items()}
            loss, _ = joint_loss(model(row), row, loss_cfg, class_weights)
            if not bool(torch.isfinite(loss)):
                bad.append(int(batch["index"][i]))
    return bad


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_cfg: LossConfig,
    device: torch.device,
    grad_clip: float = 0.0,
    class_weights: dict[str, torch.Tensor] | None = None,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    augment: AugmentConfig | None = None,
    online: OnlineConsistency | None = None,
    epoch: int = 0,
) -> dict[str, float]:
    """One pass; returns the sample-weighted mean of the total loss and of each part. `augment`:
    feature-level noise on the training inputs (noisy student; `train.augment`). `online`: a pool
    batch per step with the EMA teacher's consistency term (`train.consistency`).

    Pass the same `scaler` every epoch (as `fit` does) so the AMP loss scale carries over;
    without one a fresh scaler is made for this pass.
    """
    model.train()
    sums: dict[str, float] = {}
    n_total = 0
    use_amp = amp and device.type == "cuda"
    # AMP only on cuda: fp16 autocast plus a loss scaler (unscaled before clipping). On cpu the
    # scaler is disabled, so scale/unscale_/update are no-ops and step is optimizer.step().
    if scaler is None:
        scaler = make_scaler(amp, device)
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        if augment is not None:
            batch = augment_batch(batch, augment)
        with torch.autocast(device.type, enabled=use_amp):
            outputs = model(batch)
            loss, parts = joint_loss(outputs, batch, loss_cfg, class_weights)
            if online is not None:
                pool = to_device(next(online.batches), device)
                targets = cons.teacher_probs(online.teacher, pool)  # clean view, EMA weights
                strong = augment_batch(pool, online.strong)
                # through the inner module: one DDP forward per backward (the pool term's gradients
                # are summed into the same backward, so DDP still averages them across ranks)
                pool_loss, pool_parts = cons.consistency_loss(
                    unwrap(model)(strong), targets, online.cfg, online.softmatch
                )
                loss = loss + online.weight * pool_loss
                parts.update(pool_parts)
        if not bool(torch.isfinite(loss)):  # stop before a NaN reaches the weights
            rows = _non_finite_rows(model, batch, loss_cfg, class_weights)
            if len(rows) == int(batch["weight"].shape[0]) > 1:  # every row: the model diverged
                rows = []
            raise NonFiniteLoss(
                f"non-finite training loss ({float(loss)}) at epoch {epoch + 1}, batch {step + 1}"
                + (
                    f": rows {rows} of the training split give a non-finite loss on their own "
                    "(check their feature files)"
                    if rows
                    else ": no single row is to blame (lower train.lr, or set train.grad_clip)"
                ),
                rows,
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if online is not None:
            cons.ema_update(online.teacher, unwrap(model), online.cfg.ema_decay)
        n = int(batch["weight"].shape[0])
        n_total += n
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value * n
    return {k: v / max(1, n_total) for k, v in sums.items()}


@torch.no_grad()
def predict_probs(
    model: nn.Module, batches: Iterable[Batch], device: torch.device
) -> dict[str, np.ndarray]:
    """Softmax probabilities in row order: {"index", "emotion" (N, Ce), "intent" (N, Ci),
    labels}."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("index", "emotion", "intent", "emotion_true", "intent_true")
    }
    for batch in batches:
        logits = model(to_device(batch, device))
        out["index"].append(batch["index"].numpy())
        out["emotion"].append(torch.softmax(logits["emotion"].float(), -1).cpu().numpy())
        out["intent"].append(torch.softmax(logits["intent"].float(), -1).cpu().numpy())
        out["emotion_true"].append(batch["emotion"].numpy())
        out["intent_true"].append(batch["intent"].numpy())
    cat = {k: np.concatenate(v) for k, v in out.items()}
    order = np.argsort(cat["index"], kind="stable")
    return {k: v[order] for k, v in cat.items()}


def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, track: int = 1
) -> dict:
    """Weighted (track 1) or micro (track 2) F1 per task and the joint score, plus the
    probabilities."""
    probs = predict_probs(model, batches, device)
    result = scores(
        probs["emotion_true"],
        probs["emotion"].argmax(1),
        probs["intent_true"],
        probs["intent"].argmax(1),
        track,
    )
    return {**result, "probs": probs}


@dataclass
class OnlineConsistency:
    """What one epoch of online consistency needs: an endless iterator of pool batches, the EMA
    teacher, the ramped weight, the strong view's noise and SoftMatch's running statistics."""

    batches: Iterator[Batch]
    teacher: nn.Module
    cfg: ConsistencyConfig
    weight: float
    softmatch: cons.SoftMatchState

    @property
    def strong(self) -> AugmentConfig:
        return dataclasses.replace(self.cfg.strong, apply_to="all")


def endless(make: Callable[[int], Iterable[Batch]], epoch: int) -> Iterator[Batch]:
    """Pass after pass over `make(seed)` (reshuffled each pass) for one epoch's pool batches."""
    for k in itertools.count():
        empty = True
        for batch in make(epoch * 1009 + k):
            empty = False
            yield batch
        if empty:
            raise ValueError("online consistency: the unlabelled pool yielded no batch")


@dataclass
class FitResult:
    best_epoch: int
    best: dict[str, float]  # validation emo / int / joint at the best epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict | None = None  # model state_dict (CPU) of the best epoch
    stopped_early: bool = False
    seconds: float = 0.0


def fit(
    model: nn.Module,
    train_cfg: TrainConfig,
    loss_cfg: LossConfig,
    device: torch.device,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    class_weights: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[int, dict[str, float], bool], None] | None = None,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    state: FitResult | None = None,
    augment: AugmentConfig | None = None,
    pool_batches: Callable[[int], Iterable[Batch]] | None = None,
    consistency: ConsistencyConfig | None = None,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Train for `train_cfg.epochs`, validating after every epoch; keep the best by val joint
    (strict >).

    `train_batches(epoch)` returns that epoch's batches (reshuffled per epoch). Early stopping after
    `patience` epochs without improvement. `on_epoch(epoch, metrics, is_best)` is called every
        epoch.
    `start_epoch`, `optimizer` and `state` let a resumed run continue where it stopped. `augment`:
    feature-level noise on the training batches only (never on validation).
    `pool_batches(seed)` + `consistency` (weight > 0): online consistency against an EMA teacher
    (`teacher`, resumed, or a copy of the model); with consistency.evaluate == "ema" the EMA
    weights are the ones validated and kept as best.
    """
    t0 = time.time()
    optimizer = optimizer or make_optimizer(model, train_cfg)
    scaler = make_scaler(train_cfg.amp, device)
    result = state or FitResult(best_epoch=-1, best={"emo": 0.0, "int": 0.0, "joint": -1.0})
    if class_weights:
        class_weights = {k: v.to(device) for k, v in class_weights.items()}
    online_on = cons.is_active(consistency) and pool_batches is not None
    if online_on and teacher is None:
        teacher = cons.make_teacher(unwrap(model))
    softmatch = cons.SoftMatchState(consistency.softmatch_momentum if online_on else 0.99)
    evaluated = teacher if online_on and consistency.evaluate == "ema" else model
    for epoch in range(start_epoch, train_cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = train_cfg.lr * lr_factor(epoch, train_cfg)
        t_epoch = time.time()
        train_stats = train_one_epoch(
            model,
            train_batches(epoch),
            optimizer,
            loss_cfg,
            device,
            train_cfg.grad_clip,
            class_weights,
            train_cfg.amp,
            scaler,
            augment,
            OnlineConsistency(
                endless(pool_batches, epoch),
                teacher,
                consistency,
                cons.ramp(epoch, consistency),
                softmatch,
            )
            if online_on
            else None,
            epoch,
        )
        val = evaluate(evaluated, val_batches(), device, train_cfg.track)
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train_stats.items()},
            "val_emo": val["emo"],
            "val_int": val["int"],
            "val_joint": val["joint"],
            "epoch_seconds": time.time() - t_epoch,
        }
        is_best = val["joint"] > result.best["joint"]
        if is_best:
            result.best_epoch = epoch
            result.best = {"emo": val["emo"], "int": val["int"], "joint": val["joint"]}
            result.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in unwrap(evaluated).state_dict().items()}
            )
        result.history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics, is_best)
        if stops_after(epoch, result.best_epoch, train_cfg):
            result.stopped_early = epoch + 1 < train_cfg.epochs
            break
    result.seconds = time.time() - t0
    return result


def stops_after(epoch: int, best_epoch: int, cfg: TrainConfig) -> bool:
    """The stopping rule of `fit` (0-based epochs): all epochs done, or `patience` epochs without a
    new best. Sweeps use it to tell a trial that ended by itself from one a scheduler stopped."""
    return epoch + 1 >= cfg.epochs or bool(cfg.patience and epoch - best_epoch >= cfg.patience)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
