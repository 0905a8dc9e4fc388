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

from meiju_ray.config import ConfigError, ExperimentConfig, read_yaml_mapping, to_yaml
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


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit its model. The message names the file."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file (meta.json, ensemble.json) as a dict; CheckpointError naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_meta(directory: Path) -> dict:
    return read_json(directory / META) if (directory / META).is_file() else {}


def ensemble_members(directory: str | os.PathLike) -> list[Path] | None:
    """The member checkpoint dirs of an ensemble checkpoint; None for a single model."""
    d = Path(directory)
    if not (d / ENSEMBLE).is_file():
        return None
    members = read_json(d / ENSEMBLE).get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise CheckpointError(f'{d / ENSEMBLE}: expected {{"members": [checkpoint dirs]}}')
    return [(d / m).resolve() for m in members]


def load_weights(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The state_dict in <directory>/model.pt, read with weights_only=True (tensors only, never
    arbitrary pickled objects); CheckpointError naming the file when it cannot be read. Torch's own
    message is not passed on: for some files it suggests weights_only=False, which would run
    whatever code the file holds."""
    path = Path(directory) / WEIGHTS
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); train again or copy it again")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:  # corrupt / truncated / foreign files raise many different types
        raise CheckpointError(
            f"{path}: not a readable weights file (corrupt, truncated, or not a tensor state_dict "
            "saved by meiju-ray); train again or copy it again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a tensor state_dict")
    return state


def is_backbone(directory: str | os.PathLike) -> bool:
    """A pre-trained backbone checkpoint (train/pretrain.py): it holds encoders + fusion only."""
    return read_meta(Path(directory)).get("init") == "backbone"


def load_into(model: torch.nn.Module, state: dict, path: Path, partial: bool = False) -> None:
    """model.load_state_dict, with a one-line CheckpointError when the weights belong to another
    architecture (other keys or shapes than the config.yaml beside them describes). `partial`:
    `state` may hold a subset of the model's keys (a backbone checkpoint); the rest keep the
    model's own values."""
    own = model.state_dict()
    missing = [] if partial else [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [
            f"{len(keys)} {what} (e.g. {keys[0]!r})"
            for keys, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (shapes, "tensors of another shape"),
            )
            if keys
        ]
        raise CheckpointError(
            f"{path}: the weights are of another architecture than {path.parent / CONFIG} "
            f"describes: {', '.join(parts)}"
        )
    model.load_state_dict({**own, **state} if partial else state)


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
    tree = read_yaml_mapping(d / CONFIG)
    if not tree:
        raise ConfigError(f"{d / CONFIG}: empty; a checkpoint's config.yaml holds its whole config")
    try:
        return ExperimentConfig.from_dict(tree)
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
        return EnsembleModel(models).to(device).eval(), load_config_from(d), read_meta(d)
    cfg = load_config_from(d)
    model = build_model(cfg)
    load_into(model, load_weights(d, device), d / WEIGHTS)
    return model.to(device).eval(), cfg, read_meta(d)
