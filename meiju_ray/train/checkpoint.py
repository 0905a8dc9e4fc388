"""Checkpoints: a directory with the weights, the resolved config and a little metadata.

    <dir>/model.pt      state_dict (CPU tensors)
    <dir>/config.yaml   the resolved ExperimentConfig the model was built from
    <dir>/meta.json     epoch, validation metrics, label lists

An ensemble checkpoint (a teacher of several seeds) holds instead

    <dir>/ensemble.json {"members": [relative or absolute checkpoint dirs]}
    <dir>/config.yaml   the first member's config

and loads as one model whose outputs are the log of the members' mean probabilities, so every
reader (pseudo-labelling, calibration, prediction) treats it like a single checkpoint.

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

WEIGHTS, CONFIG, META, ENSEMBLE = "model.pt", "config.yaml", "meta.json", "ensemble.json"


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


def save_ensemble(directory: str | os.PathLike, members: list[Path]) -> Path:
    """An ensemble checkpoint over existing member checkpoints (paths stored relative to it)."""
    directory = Path(directory)
    if not members:
        raise ValueError("an ensemble needs at least one member checkpoint")
    for m in members:
        load_config_from(m)  # each member must be a complete checkpoint
    with atomic_dir(directory) as tmp:
        rel = [os.path.relpath(Path(m).resolve(), directory.resolve()) for m in members]
        (tmp / ENSEMBLE).write_text(json.dumps({"members": rel}, indent=2))
        (tmp / CONFIG).write_text((Path(members[0]) / CONFIG).read_text())
        (tmp / META).write_text(json.dumps({"ensemble_of": len(members)}, indent=2))
    return directory


def ensemble_members(directory: str | os.PathLike) -> list[Path] | None:
    """The member checkpoint dirs of an ensemble checkpoint; None for a single model."""
    d = Path(directory)
    if not (d / ENSEMBLE).is_file():
        return None
    return [(d / m).resolve() for m in json.loads((d / ENSEMBLE).read_text())["members"]]


class EnsembleModel(torch.nn.Module):
    """Mean of the members' softmax probabilities per output head, returned as log-probabilities
    (softmax of the result gives the mean back, so it stands in for logits everywhere)."""

    def __init__(self, members: list[JointModel]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = [m(batch) for m in self.members]
        return {
            head: torch.stack([torch.softmax(o[head].float(), -1) for o in outs])
            .mean(0)
            .clamp_min(1e-12)
            .log()
            for head in outs[0]
        }


def load_config_from(directory: str | os.PathLike) -> ExperimentConfig:
    d = Path(directory)
    has_model = (d / WEIGHTS).is_file() or (d / ENSEMBLE).is_file()
    if not has_model or not (d / CONFIG).is_file():
        raise FileNotFoundError(
            f"not a checkpoint directory (needs {WEIGHTS} or {ENSEMBLE}, and {CONFIG}): {d}"
        )
    try:
        return ExperimentConfig.from_dict(yaml.safe_load((d / CONFIG).read_text()))
    except ConfigError as exc:
        raise ConfigError(f"{d / CONFIG}: {exc}") from None


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ExperimentConfig, dict]:
    """Rebuild the model from the stored config and load its weights (eval mode); an ensemble
    checkpoint loads every member into one EnsembleModel."""
    d = Path(directory)
    members = ensemble_members(d)
    if members is not None:
        models = [load(m, device)[0] for m in members]
        meta = json.loads((d / META).read_text()) if (d / META).is_file() else {}
        return EnsembleModel(models).to(device).eval(), load_config_from(d), meta
    cfg = load_config_from(d)
    model = build_model(cfg)
    model.load_state_dict(torch.load(d / WEIGHTS, map_location=device, weights_only=True))
    meta = json.loads((d / META).read_text()) if (d / META).is_file() else {}
    return model.to(device).eval(), cfg, meta
