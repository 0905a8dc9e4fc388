"""The Python API (`import meiju_ray`): the CLI's entry points as plain functions, for notebooks.

    import meiju_ray
    cfg = meiju_ray.load_config("experiments/smoke.yaml", {"data.root": "worlds/demo"})
    result = meiju_ray.pipeline(cfg)                 # or train / tune / evaluate
    meiju_ray.predict(result["final_model"], features)   # a DataFrame: labels + probabilities

Each takes a config (an ExperimentConfig, or an experiment YAML path plus overrides as
"key=value" strings or a {"key": value} dict) and returns what the command prints as a dict. A
model is a checkpoint directory, an MLflow model URI (runs:/<run_id>/model,
models:/<name>/<version>, models:/<name>@<alias>), a model loaded with mlflow.pyfunc.load_model,
or checkpoint.load's (model, config, meta).

Logging: when neither the 'meiju_ray' logger nor the root logger has a handler (a notebook, a plain
script), the first call adds one on 'meiju_ray' that prints INFO lines to stderr; it steps aside as
soon as the root logger gets a handler (logging.basicConfig, the CLI, pytest), so nothing prints
twice.

Ray and MLflow are imported by the calls that use them, not by `import meiju_ray`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meiju_ray.config import ExperimentConfig
from meiju_ray.config import load_config as _load_config

log = logging.getLogger("meiju_ray")

__all__ = ["evaluate", "load_config", "pipeline", "predict", "pseudo_label", "train", "tune"]

Overrides = Mapping[str, Any] | str


class _WithoutRootHandlers(logging.Filter):
    """Passes records only while the root logger has no handler of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers


def log_to_stderr(level: int = logging.INFO) -> None:
    """INFO lines of the 'meiju_ray' logger on stderr, unless logging is configured already."""
    logger = logging.getLogger("meiju_ray")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    handler.addFilter(_WithoutRootHandlers())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)


def _override_strings(overrides: tuple[Overrides, ...]) -> list[str]:
    out: list[str] = []
    for item in overrides:
        if isinstance(item, Mapping):  # values as JSON: valid YAML flow, so types survive
            out += [f"{k}={json.dumps(v)}" for k, v in item.items()]
        else:
            out.append(str(item))
    return out


def load_config(
    experiment: str | os.PathLike | None = None, *overrides: Overrides, require: bool = True
) -> ExperimentConfig:
    """An experiment YAML (None: the defaults) with overrides: "key=value" strings or
    {"key": value} dicts, applied in order; checked like the CLI's (unknown keys fail)."""
    return _load_config(experiment, _override_strings(overrides), require=require)


def _config(config: ExperimentConfig | str | os.PathLike, overrides: tuple) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if not overrides:
            return config
        from meiju_ray.config import parse_override, set_dotted

        tree = config.to_dict()
        for text in _override_strings(overrides):
            set_dotted(tree, *parse_override(text))
        return ExperimentConfig.from_dict(tree)
    return load_config(config, *overrides)


def _local_checkpoint(ref: Any, tracking_uri: str | None = None) -> Path:
    """A checkpoint directory for a model reference; MLflow is imported only for an MLflow one."""
    ref = str(ref)
    if ":/" not in ref and not (Path(ref) / "MLmodel").is_file():
        return Path(ref)
    from meiju_ray.tracking.models import resolve_checkpoint
    from meiju_ray.tracking.tracker import default_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri("runs/_")
    return resolve_checkpoint(ref, uri)


def train(config: ExperimentConfig | str | os.PathLike, *overrides: Overrides) -> dict:
    """`meiju-ray train`: train on the labelled split, select on validation; writes
    <output_dir>/checkpoint/ + metrics.json and (tracking.enabled) one MLflow run with the curves
    and the model. Returns the metrics (emo, int, joint, best_epoch, ..., mlflow)."""
    log_to_stderr()
    from meiju_ray.tracking.standalone import tracked_train

    return tracked_train(_config(config, overrides))


def pipeline(config: ExperimentConfig | str | os.PathLike, *overrides: Overrides) -> dict:
    """`meiju-ray pipeline`: teacher -> pseudo-labels -> student -> metrics.json +
    submission.csv; returns what metrics.json holds (final_model: the student's checkpoint)."""
    log_to_stderr()
    from meiju_ray.pipeline import run_pipeline

    return run_pipeline(_config(config, overrides))


def tune(
    config: ExperimentConfig | str | os.PathLike, *overrides: Overrides, resume: bool = False
) -> dict:
    """`meiju-ray tune`: the Ray Tune sweep over tune.search_space; returns the report."""
    log_to_stderr()
    from meiju_ray.distributed.tune import run_tune

    return run_tune(_config(config, overrides), resume=resume)


def pseudo_label(
    config: ExperimentConfig | str | os.PathLike,
    *overrides: Overrides,
    checkpoint: Any = None,
    out: str | os.PathLike | None = None,
) -> dict:
    """`meiju-ray pseudo-label`: the teacher (default <output_dir>/checkpoint) over the unlabelled
    pool; writes <out> (default <output_dir>/pseudo_labels); returns the summary."""
    log_to_stderr()
    from meiju_ray.tracking.standalone import tracked_pseudo_label
    from meiju_ray.tracking.tracker import resolve_uri

    cfg = _config(config, overrides)
    teacher = (
        _local_checkpoint(checkpoint, resolve_uri(cfg))
        if checkpoint
        else Path(cfg.output_dir) / "checkpoint"
    )
    return tracked_pseudo_label(cfg, teacher, Path(out or Path(cfg.output_dir) / "pseudo_labels"))


def evaluate(
    model: Any,
    split: str = "Validation",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    tracking_uri: str | None = None,
) -> dict:
    """`meiju-ray evaluate`: per-task F1, the joint score and confusion matrices of a checkpoint
    (a directory or an MLflow model URI) on a labelled split of its data (or of `data_root`)."""
    log_to_stderr()
    from meiju_ray.tracking.standalone import tracked_evaluate

    ckpt = _local_checkpoint(model, tracking_uri)
    return tracked_evaluate(ckpt, data_root, split, device, str(model))


def predict(model: Any, features: Any, device: str = "cpu", tracking_uri: str | None = None):
    """Labels and probabilities for utterances held in memory: a pandas DataFrame with id,
    emotion, emotion_prob, intent, intent_prob and p_emotion_<label> / p_intent_<label> columns.

    `features`: a DataFrame (or dict of columns, or list of row dicts) with `id` and one [T, D]
    array per modality and utterance (columns named as data.modalities: A, V, L), or a PackedSplit
    (train.predict). `model`: a checkpoint directory, an MLflow model URI, an
    mlflow.pyfunc.load_model result, or checkpoint.load's (model, config, meta)."""
    from meiju_ray.train.predict import features_to_split, predict_features, to_frame

    if hasattr(model, "predict") and hasattr(model, "metadata"):  # an MLflow PyFuncModel
        return model.predict(to_frame(features))
    if isinstance(model, tuple):
        net, cfg = model[0], model[1]
    else:
        from meiju_ray.train import checkpoint

        net, cfg, _ = checkpoint.load(_local_checkpoint(model, tracking_uri), device)
    return predict_features(net, cfg, features_to_split(features, cfg), device)
