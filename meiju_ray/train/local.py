"""In-process training: labelled (+ optional pseudo-labelled) rows -> best checkpoint +
metrics.json.

`run_local(cfg)` is the `scaling.num_workers == 0` path; `meiju_ray.distributed.train.run_train`
chooses between it and Ray Train, which runs the same engine functions on every worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from meiju_ray.config import ExperimentConfig, check_required, to_yaml
from meiju_ray.data.batching import epoch_rows, iter_batches
from meiju_ray.data.layout import UNLABELED, check_splits
from meiju_ray.data.packing import PackedSplit, load_split
from meiju_ray.fileio import ensure_writable_dir, locked_dir, write_json_atomic, write_text_atomic
from meiju_ray.model.losses import balanced_class_weights
from meiju_ray.model.network import build_model, count_parameters
from meiju_ray.train import augment, checkpoint
from meiju_ray.train import consistency as cons
from meiju_ray.train.engine import (
    FitResult,
    NonFiniteLoss,
    fit,
    resolve_device,
    seed_everything,
    set_threads,
)
from meiju_ray.train.metrics import majority_scores

log = logging.getLogger("meiju_ray")

EpochCallback = Callable[[int, dict[str, float], bool], None]


def class_weights_for(cfg: ExperimentConfig, train: PackedSplit) -> dict[str, torch.Tensor] | None:
    if cfg.loss.class_weights != "balanced":
        return None
    return {
        "emotion": balanced_class_weights(train.emotion, len(cfg.data.emotion_labels)),
        "intent": balanced_class_weights(train.intent, len(cfg.data.intent_labels)),
    }


def load_train_val(
    cfg: ExperimentConfig, extra_train: PackedSplit | None = None
) -> tuple[PackedSplit, PackedSplit]:
    """Pack (cached) and load the training and validation splits; append pseudo-labelled rows."""
    progress = lambda msg: log.info(msg)  # noqa: E731
    check_splits(cfg.data)  # labels on every labelled line, no id in two splits
    train = load_split(cfg.data, cfg.data.train_split, progress)
    val = load_split(cfg.data, cfg.data.val_split, progress)
    if extra_train is not None and len(extra_train):
        train = PackedSplit.concat([train, extra_train])
    return train, val


def load_pool(cfg: ExperimentConfig) -> PackedSplit | None:
    """The unlabelled pool for online consistency (None when consistency is off)."""
    if not cons.is_active(cfg.consistency):
        return None
    pool = load_split(cfg.data, UNLABELED, lambda msg: log.info(msg))
    if not len(pool):
        raise ValueError(
            f"consistency.weight={cfg.consistency.weight} needs unlabelled rows, but "
            f"{cfg.data.unlabeled_dir} under {cfg.data.root} has none"
        )
    return capped_pool(cfg, pool)


def capped_pool(cfg: ExperimentConfig, pool: PackedSplit) -> PackedSplit:
    """At most pseudo.max_rows of the pool, a random draw fixed by the seed (0 = all rows)."""
    if cfg.pseudo.max_rows and len(pool) > cfg.pseudo.max_rows:
        pool = pool.subset(
            np.random.default_rng(cfg.seed).permutation(len(pool))[: cfg.pseudo.max_rows]
        )
    return pool


def pool_batch_size(cfg: ExperimentConfig, world_size: int = 1) -> int:
    """Pool rows per step (per rank): consistency.pool_ratio x the labelled batch size."""
    return max(1, cfg.consistency.pool_ratio * cfg.train.batch_size // world_size)


def initial_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a saved checkpoint (a student starting from its teacher), or of a
    pre-trained backbone (encoders + fusion only: checkpoint.is_backbone)."""
    return checkpoint.load_weights(checkpoint_dir)


def fit_local(
    cfg: ExperimentConfig,
    train: PackedSplit,
    val: PackedSplit,
    on_epoch: EpochCallback | None = None,
    model: torch.nn.Module | None = None,
    pool: PackedSplit | None = None,
) -> tuple[FitResult, torch.nn.Module]:
    """The in-process training path. `model`: train this one (built from cfg when None; pass it to
    read its live weights from `on_epoch`). `pool`: unlabelled rows for online consistency."""
    seed_everything(cfg.seed)
    set_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    model = (model or build_model(cfg)).to(device)
    log.info(
        "model: %s preset, %s encoders, %.2fM parameters, device %s",
        cfg.model.preset,
        cfg.model.sharing,
        count_parameters(model) / 1e6,
        device,
    )
    try:
        result = _fit(cfg, model, device, train, val, on_epoch, pool)
    except NonFiniteLoss as exc:
        if not exc.rows:
            raise
        ids = [train.ids[i] for i in exc.rows[:5]]
        raise NonFiniteLoss(f"{exc} -- ids {ids}", exc.rows) from None
    return result, model


def _fit(cfg, model, device, train, val, on_epoch, pool) -> FitResult:
    t = cfg.train
    return fit(
        model,
        t,
        cfg.loss,
        device,
        train_batches=lambda epoch: iter_batches(
            train,
            t.batch_size,
            True,
            cfg.seed + epoch,
            t.bucket_by_length,
            rows=epoch_rows(train, cfg.pseudo.epoch_pool_ratio, cfg.seed + epoch),
        ),
        val_batches=lambda: iter_batches(val, 2 * t.batch_size, False, 0, t.bucket_by_length),
        class_weights=class_weights_for(cfg, train),
        on_epoch=on_epoch,
        augment=augment.for_run(cfg.augment, train),
        pool_batches=None
        if pool is None
        else lambda seed: iter_batches(pool, pool_batch_size(cfg), True, seed, t.bucket_by_length),
        consistency=cfg.consistency,
    )


class EpochLog:
    """The console line of each epoch: `epoch k/N`, loss, validation scores, and an ETA for the
    remaining epochs (the mean epoch time so far; early stopping may end sooner)."""

    def __init__(self, epochs: int):
        self.epochs, self.t0, self.start = epochs, time.time(), None

    def __call__(self, epoch: int, m: dict[str, float], is_best: bool) -> None:
        if self.start is None:  # a resumed run starts at its checkpoint's epoch
            self.start = epoch
        done = epoch + 1 - self.start
        left = max(0, self.epochs - epoch - 1)
        eta = (time.time() - self.t0) / done * left
        log.info(
            "epoch %d/%d  loss %.4f  val emo %.4f int %.4f joint %.4f%s  (%.1fs%s)",
            epoch + 1,
            self.epochs,
            m["train_loss"],
            m["val_emo"],
            m["val_int"],
            m["val_joint"],
            "  *best" if is_best else "",
            m["epoch_seconds"],
            f", ETA {int(eta) // 60}:{int(eta) % 60:02d}" if left else "",
        )


def write_outputs(
    cfg: ExperimentConfig,
    result: FitResult,
    train: PackedSplit,
    val: PackedSplit,
    extra: dict | None = None,
) -> dict:
    """checkpoint/ (best epoch), metrics.json, history.json in cfg.output_dir; returns the
    metrics."""
    out = Path(cfg.output_dir)
    if result.best_state is None:
        raise RuntimeError("training produced no checkpoint (no epoch was validated)")
    majority = majority_scores(
        train.emotion, train.intent, val.emotion, val.intent, cfg.train.track
    )
    metrics = {
        "emo": result.best["emo"],
        "int": result.best["int"],
        "joint": result.best["joint"],
        "best_epoch": result.best_epoch + 1,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
        "n_train": len(train),
        "n_val": len(val),
        "majority_baseline": majority,
        **(extra or {}),
    }
    checkpoint.save(
        out / "checkpoint",
        result.best_state,
        cfg,
        {"epoch": result.best_epoch + 1, "val": result.best},
    )
    write_json_atomic(out / "history.json", result.history)
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    return metrics


def prepare_output(cfg: ExperimentConfig) -> Path:
    """Check the required keys and create output_dir. Its config.yaml is written with the results
    (write_outputs), so a failed re-run leaves the earlier run's files matching each other."""
    check_required(cfg)
    return ensure_writable_dir(cfg.output_dir)


def run_local(
    cfg: ExperimentConfig,
    extra_train: PackedSplit | None = None,
    on_epoch: EpochCallback | None = None,
    init_from: Path | None = None,
) -> dict:
    """Train in this process on data.train_split (+ extra rows), select on data.val_split; write
    outputs; return metrics. `init_from`: a checkpoint whose weights the model starts from."""
    with locked_dir(prepare_output(cfg)):
        return _run_local(cfg, extra_train, on_epoch, init_from)


def _run_local(cfg, extra_train, on_epoch, init_from) -> dict:
    out = Path(cfg.output_dir)
    train, val = load_train_val(cfg, extra_train)
    log.info(
        "training on %d rows (%d extra), validating on %d",
        len(train),
        0 if extra_train is None else len(extra_train),
        len(val),
    )

    log_epoch = EpochLog(cfg.train.epochs)

    def callback(epoch: int, m: dict[str, float], is_best: bool) -> None:
        log_epoch(epoch, m, is_best)
        if on_epoch:
            on_epoch(epoch, m, is_best)

    model = None
    if init_from is not None:
        seed_everything(cfg.seed)
        model = build_model(cfg)
        weights = initial_weights(init_from)
        checkpoint.load_into(
            model,
            weights,
            Path(init_from) / checkpoint.WEIGHTS,
            partial=checkpoint.is_backbone(init_from),
        )
    pool = load_pool(cfg)
    if pool is not None:
        log.info("online consistency on %d unlabelled rows (EMA teacher)", len(pool))
    result, _ = fit_local(cfg, train, val, callback, model=model, pool=pool)
    n_extra = 0 if extra_train is None else len(extra_train)
    metrics = write_outputs(cfg, result, train, val, {"n_pseudo": n_extra})
    log.info(
        "best epoch %d: val emo %.4f int %.4f joint %.4f (majority-class joint %.4f) -> %s",
        metrics["best_epoch"],
        metrics["emo"],
        metrics["int"],
        metrics["joint"],
        metrics["majority_baseline"]["joint"],
        out,
    )
    return metrics
