"""Checkpoints: a directory with the weights, the resolved config and a little metadata.

    <dir>/model.pt      state_dict (CPU tensors)
    <dir>/config.yaml   the resolved ExperimentConfig the model was built from
    <dir>/meta.json     epoch, validation metrics, label lists

Written into a temp directory and renamed into place, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from meiju_ray.config import ConfigError, ExperimentConfig, to_yaml
from meiju_ray.fileio import atomic_dir
from meiju_ray.model.network import JointModel, build_model

WEIGHTS, CONFIG, META = "model.pt", "config.yaml", "meta.json"


def save(
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    meta: dict[str, Any] | None = None,
) -> Path:
    with atomic_dir(directory) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(to_yaml(cfg))
        meta = {
            **(meta or {}),
            "emotion_labels": cfg.data.emotion_labels,
            "intent_labels": cfg.data.intent_labels,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, default=float))
    return Path(directory)


def load_config_from(directory: str | os.PathLike) -> ExperimentConfig:
    d = Path(directory)
    if not (d / WEIGHTS).is_file() or not (d / CONFIG).is_file():
        raise FileNotFoundError(f"not a checkpoint directory (needs {WEIGHTS} and {CONFIG}): {d}")
    try:
        return ExperimentConfig.from_dict(yaml.safe_load((d / CONFIG).read_text()))
    except ConfigError as exc:
        raise ConfigError(f"{d / CONFIG}: {exc}") from None


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[JointModel, ExperimentConfig, dict]:
    """Rebuild the model from the stored config and load its weights (eval mode)."""
    d = Path(directory)
    cfg = load_config_from(d)
    model = build_model(cfg)
    model.load_state_dict(torch.load(d / WEIGHTS, map_location=device, weights_only=True))
    meta = json.loads((d / META).read_text()) if (d / META).is_file() else {}
    return model.to(device).eval(), cfg, meta
