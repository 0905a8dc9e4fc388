"""`meiju-ray train`, `pseudo-label` and `evaluate` on their own, logged to MLflow as the pipeline
logs its stages: one run each (tags stage=train / pseudo_label / evaluate) with the config, the
data as dataset inputs, the curves or scores, confusion matrices, the model (train) and a
description. tracking.enabled=false (for evaluate: the checkpoint's config, or track=False) runs
them without MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from meiju_ray.config import ExperimentConfig
from meiju_ray.tracking.provenance import (
    data_splits,
    describe,
    describe_pseudo,
    log_datasets,
    scores_line,
)
from meiju_ray.tracking.tracker import Tracker, TrackingError, check_reachable

log = logging.getLogger("meiju_ray")


def _mlflow_info(tracker: Tracker, run_id: str | None) -> dict:
    experiment_id = tracker.client.get_run(run_id).info.experiment_id if run_id else None
    return {
        "tracking_uri": tracker.uri,
        "experiment": tracker.cfg.tracking.experiment if tracker.enabled else None,
        "experiment_id": experiment_id,
        "run_id": run_id,
    }


def tracked_train(cfg: ExperimentConfig) -> dict:
    """run_train in one MLflow run: per-epoch curves, validation (and withheld-test) scores,
    confusion matrices, the checkpoint as an MLflow model (registered when
    tracking.register_model is set). Returns run_train's metrics plus `mlflow`."""
    from meiju_ray.distributed.train import run_train
    from meiju_ray.pipeline import _score_stage  # the pipeline's scorer: the same numbers
    from meiju_ray.tracking.models import register

    tracker = Tracker(cfg)
    if tracker.enabled:
        check_reachable(tracker.uri)  # before any training
    out = Path(cfg.output_dir)
    registered, model_uri = None, None
    name = cfg.tracking.run_name or f"train:{out.name}"
    with tracker.run(name, tags={"stage": "train"}) as run_id:
        tracker.log_config(cfg)
        rows = log_datasets(tracker, cfg, data_splits(cfg))
        metrics = run_train(cfg, on_epoch=lambda e, m, best: tracker.log_epoch(e, m))
        if tracker.enabled:
            ckpt = out / "checkpoint"
            _score_stage(cfg, tracker, "train", ckpt, metrics)
            tracker.log_artifact(out / "metrics.json")
            info = tracker.log_model(ckpt)
            model_uri = f"runs:/{run_id}/model"
            if cfg.tracking.register_model:
                registered = register(
                    tracker.client,
                    cfg.tracking.register_model,
                    info.model_id,
                    run_id,
                    cfg.tracking.model_alias,
                )
            test = f"; withheld test {scores_line(metrics['test'])}" if "test" in metrics else ""
            describe(
                tracker,
                f"Trained the {cfg.model.preset} model (hidden {cfg.model.hidden}) on "
                f"{Path(cfg.data.root).resolve()}: {rows.get(cfg.data.train_split, '?')} labelled "
                f"{cfg.data.train_split} rows, selected on {rows.get(cfg.data.val_split, '?')} "
                f"{cfg.data.val_split} rows. Best validation {scores_line(metrics)} at epoch "
                f"{metrics['best_epoch']} of {metrics['epochs_run']}{test}. Model: {model_uri}"
                + (f" (registered as {registered['uri']})." if registered else "."),
            )
    metrics["mlflow"] = _mlflow_info(tracker, run_id) | {
        "model": model_uri,
        "registered_model": registered,
    }
    return metrics


def tracked_pseudo_label(cfg: ExperimentConfig, teacher: Path, out: Path) -> dict:
    """run_pseudo_label in one MLflow run: the summary (per-class counts, precision against
    withheld labels) as metrics and summary.json. Returns the summary plus `mlflow`."""
    from meiju_ray.data.layout import UNLABELED
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.pseudo.labelling import SUMMARY_FILE
    from meiju_ray.tracking.tracker import summary_metrics

    tracker = Tracker(cfg)
    if tracker.enabled:
        check_reachable(tracker.uri)
    name = cfg.tracking.run_name or f"pseudo_label:{Path(out).name}"
    with tracker.run(name, tags={"stage": "pseudo_label", "teacher": str(teacher)}) as run_id:
        tracker.log_config(cfg)
        log_datasets(tracker, cfg, {UNLABELED: "unlabelled"})
        info = run_pseudo_label(cfg, teacher, out)
        tracker.log_metrics(summary_metrics(info))
        tracker.log_artifact(Path(out) / SUMMARY_FILE)
        describe_pseudo(tracker, cfg, info, teacher, out)
    return info | {"mlflow": _mlflow_info(tracker, run_id)}


def tracked_evaluate(
    ckpt: Path,
    data_root: str | None = None,
    split: str = "Validation",
    device: str = "auto",
    reference: str = "",
    track: bool = True,
) -> dict:
    """evaluate_checkpoint in one MLflow run of the checkpoint's own tracking settings (its
    training config's store and experiment; skipped with a warning when that store cannot be
    used): the scores as metrics (<split>_emo, ...) and confusion matrices."""
    import dataclasses

    from meiju_ray.train import checkpoint
    from meiju_ray.train.inference import evaluate_checkpoint, with_data_root

    cfg = with_data_root(checkpoint.load_config_from(ckpt), data_root)
    if not track:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    tracker = Tracker(cfg)
    if tracker.enabled:
        try:
            check_reachable(tracker.uri)
        except TrackingError as exc:
            log.warning("evaluate: not logged to MLflow (%s)", exc)
            tracker = Tracker(
                dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
            )
    ref = reference or str(ckpt)
    name = f"evaluate:{split}"
    with tracker.run(name, tags={"stage": "evaluate", "checkpoint": ref}) as run_id:
        log_datasets(
            tracker, cfg, {split: "testing" if split == cfg.data.test_split else "evaluation"}
        )
        result = evaluate_checkpoint(ckpt, data_root, split, device)
        tracker.log_metrics({f"{split}_{k}": result[k] for k in ("emo", "int", "joint", "n")})
        for task, labels in (
            ("emotion", cfg.data.emotion_labels),
            ("intent", cfg.data.intent_labels),
        ):
            tracker.log_confusion(
                result[f"confusion_{task}"],
                labels,
                f"{ref}: {task} ({split})",
                f"confusion_{task}.png",
            )
        describe(
            tracker,
            f"Evaluated {ref} on the {split} split of {Path(cfg.data.root).resolve()} "
            f"({result['n']} rows): {scores_line(result)}.",
        )
    result["mlflow"] = _mlflow_info(tracker, run_id)
    return result
