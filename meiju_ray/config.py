"""Typed experiment configuration: schema and defaults here, values in `experiments/*.yaml`.

Merge order: dataclass defaults <- experiment YAML <- `key.sub=value` overrides. Unknown keys and
wrong types raise `ConfigError` naming the key at load time. The resolved config round-trips through
`to_dict` / `from_dict`, which is how it crosses into Ray workers and Tune trials.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meiju_ray.labels import EMOTIONS, INTENTS


class ConfigError(ValueError):
    """A config file, key or value is wrong. The message names the key (and file)."""


@dataclass
class ModalityConfig:
    name: str                 # short tag used in batch keys: "A", "V", "L"
    folder: str               # sub-folder of the feature dir holding <id>.npy
    dim: int                  # D of every [T, D] array; a mismatch is an error, never reshaped
    encoder: str = ""         # "" = the model default for this preset; or lstm | textcnn | pool | attn
    max_len: int = 0          # keep at most this many frames (evenly subsampled); 0 = all


DEFAULT_MODALITIES = [
    ModalityConfig("A", "wav2vec", 512),
    ModalityConfig("V", "ResNet-50", 342),
    ModalityConfig("L", "RoBERTa", 768),
]


@dataclass
class DataConfig:
    root: str = ""                                    # required: the Track1/<lang> directory
    annotation_dir: str = "Annotation"                # holds <split>_files.txt (relative to root)
    feature_dir: str = "Annotation/features"          # labelled/test features (relative to root or absolute)
    unlabeled_dir: str = "NoAnnotation"               # unlabelled pool (list file optional)
    unlabeled_feature_dir: str = "NoAnnotation/features"
    unlabeled_truth: str = "hidden/NoAnnotation_labels.txt"  # withheld pool labels, if the data has them
    cache_dir: str = ""                               # packed shards; "" = <root>/.meiju_packed
    train_split: str = "Training"
    val_split: str = "Validation"
    test_split: str = "Testing"
    modalities: list[ModalityConfig] = field(default_factory=lambda: [dataclasses.replace(m) for m in DEFAULT_MODALITIES])
    emotion_labels: list[str] = field(default_factory=lambda: list(EMOTIONS))
    intent_labels: list[str] = field(default_factory=lambda: list(INTENTS))
    shard_rows: int = 1024                            # rows per packed Parquet shard (= one pseudo-label work item)


@dataclass
class ModelConfig:
    preset: str = "paper"            # paper | baseline (baseline = docs/baseline.md §3 topology)
    hidden: int = 128
    encoder: str = "pool"            # default encoder for every modality: lstm | textcnn | pool | attn
    sharing: str = "shared"          # shared (one encoder stack for both tasks) | per_task (baseline)
    fusion_layers: int = 1
    fusion_heads: int = 4
    fusion_ff: int = 256
    modality_embedding: bool = True  # learned type embedding per modality token (baseline: none)
    heads_emo_to_int: int = 4        # heads of the emotion-queries-attend-to-intent direction
    heads_int_to_emo: int = 2        # heads of the intent-queries-attend-to-emotion direction
    interaction: str = "gate"        # gate (baseline "normal") | plain (Q + hence) | none
    intent_fusion: str = "learned"   # off | average | learned: final intent = mix(IntC, IntCF)
    classifier: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.3
    input_dropout: float = 0.1       # dropout on raw frame features


@dataclass
class LossConfig:
    emotion_weight: float = 1.0
    intent_weight: float = 1.0
    aux_weight: float = 1.0          # weight of the auxiliary concatenation heads (EmoCF, IntCF)
    label_smoothing: float = 0.0
    class_weights: str = "none"      # none | balanced (inverse frequency on the training labels)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    schedule: str = "cosine"         # constant | linear (baseline: constant then linear decay) | cosine
    constant_epochs: int = 0         # epochs at full LR before the decay (baseline niter)
    grad_clip: float = 1.0           # 0 = off
    patience: int = 8                # early stopping on validation joint; 0 = off
    bucket_by_length: bool = True    # group similar lengths so little is spent on padding
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    num_threads: int = 0             # torch threads per process; 0 = cores / processes on this node
    amp: bool = False                # autocast on cuda
    track: int = 1                   # 1: weighted F1 per task; 2: micro F1


@dataclass
class ScalingConfig:
    num_workers: int = 0             # 0 = in-process; >= 1 = Ray Train TorchTrainer workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 2            # a dead worker is replaced and training resumes from the latest checkpoint


@dataclass
class PseudoLabelConfig:
    """Teacher -> pseudo-labels on the unlabelled pool -> student (docs: paper.md §5-6)."""
    enabled: bool = True
    rule: str = "per_task"           # per_task | joint | classwise | topk
    threshold: float = 0.99          # the winning paper's bar; per task, or both tasks for `joint`
    class_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    #   classwise: {"emotion": {"fear": 0.85, ...}, "intent": {...}}; unlisted classes use `threshold`
    topk_per_class: int = 100        # topk: the k most confident rows predicted as each class
    min_confidence: float = 0.0      # topk: and at least this confident
    consistency: bool = False        # reject (emotion, intent) pairs never seen in the training labels
    calibrate: str = "temperature"   # none | temperature (fit on validation before thresholding)
    weight: float = 1.0              # loss weight of a pseudo-labelled row (gold rows weigh 1)
    weighting: str = "constant"      # constant | confidence (weight * confidence)
    rounds: int = 1                  # teacher -> student -> student becomes the next teacher
    max_rows: int = 0                # use at most this many unlabelled rows (0 = all)
    actors: int = 1                  # Ray Data inference actors; 0 = as many as the cluster's CPUs (GPUs) hold
    cpus_per_actor: float = 0.5      # actors x this <= cluster CPUs - 1 (Ray Data's ListFiles needs 1 CPU)
    in_process_below: int = 20000    # on a private local Ray, pools with fewer rows are labelled in this
    #   process by the same per-shard code: Ray Data's actor start-up (~5 s on 2 cores) costs more than
    #   it saves below ~10-20k Track 1 rows (BENCHMARKS.md §4). 0 = always Ray Data; an attached
    #   cluster (ray.address / $RAY_ADDRESS) always uses Ray Data
    gpus_per_actor: float = 0.0
    batch_size: int = 256


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = ""                    # "" = sqlite:///<abs output_dir/..>/mlflow.db; or http://host:port
    experiment: str = "meiju_ray"
    run_name: str = ""
    register_model: str = ""         # sweeps: register the best trial's model under this name ("" = don't)


@dataclass
class RayConfig:
    address: str = ""                # "" = $RAY_ADDRESS if set, else a private local cluster
    num_cpus: int = 0                # local cluster size; 0 = all cores
    object_store_mb: int = 512       # local cluster object store (the default takes 30% of RAM)


@dataclass
class TuneConfig:
    """`meiju-ray tune`: a Ray Tune sweep over config keys (docs: sweeps_and_clusters.md).

    search_space maps a dotted config key to ONE distribution:
        {choice: [a, b]} | {grid: [a, b]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {randint: [lo, hi]}
    (randint: hi exclusive). Keys swept together get a name of their own and list them under `keys`;
    each choice is then a list with one value per key:
        head_split: {keys: [model.heads_emo_to_int, model.heads_int_to_emo], choice: [[4, 2], [2, 4]]}
    """
    name: str = "sweep"              # <output_dir>/tune/<name>; the MLflow parent run is "sweep:<name>"
    search_space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    metric: str = "val_joint"        # a per-epoch metric of the engine (val_joint, val_emo, val_int, train_loss)
    mode: str = "max"                # max | min
    num_samples: int = 4             # samples of the space (each grid point is repeated num_samples times)
    max_concurrent_trials: int = 0   # 0 = as many as the cluster's resources allow
    cpus_per_trial: float = 1.0      # the trial process (with scaling.num_workers >= 1: only the Train driver)
    gpus_per_trial: float = 0.0
    scheduler: str = "asha"          # asha | none
    grace_period: int = 1            # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2        # ASHA: keep the best 1/reduction_factor at each rung
    search_alg: str = "random"       # random (incl. grid) | optuna (needs the optuna package)
    trial: str = "student"           # student: gold + re-thresholded pseudo-labels | train: gold labels only
    teacher_checkpoint: str = ""     # student trials: an existing teacher; "" = train one before the sweep
    storage: str = ""                # Tune's experiment storage; "" = <output_dir>/tune. With workers on other
    #                                  nodes: a path every node mounts, or s3://bucket/prefix


@dataclass
class ExperimentConfig:
    seed: int = 0
    output_dir: str = ""             # required
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
        cfg = _build(cls, values, "")
        validate(cfg)
        return cfg


# --------------------------------------------------------------------------------------------
# building dataclasses from plain dicts with type checks


def _build(cls: type, values: Any, where: str) -> Any:
    if dataclasses.is_dataclass(values) and isinstance(values, cls):
        values = dataclasses.asdict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{_join(where, unknown[0])}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {_coerce(key_tp, k, key): _coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r} ({type(value).__name__})")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --------------------------------------------------------------------------------------------
# validation of values (cross-field rules live here, not scattered through the code)

_CHOICES = {
    "model.preset": ("paper", "baseline"),
    "model.encoder": ("lstm", "textcnn", "pool", "attn"),
    "model.sharing": ("shared", "per_task"),
    "model.interaction": ("gate", "plain", "none"),
    "model.intent_fusion": ("off", "average", "learned"),
    "loss.class_weights": ("none", "balanced"),
    "train.schedule": ("constant", "linear", "cosine"),
    "train.track": (1, 2),
    "pseudo.rule": ("per_task", "joint", "classwise", "topk"),
    "pseudo.calibrate": ("none", "temperature"),
    "pseudo.weighting": ("constant", "confidence"),
    "tune.mode": ("max", "min"),
    "tune.scheduler": ("asha", "none"),
    "tune.search_alg": ("random", "optuna"),
    "tune.trial": ("student", "train"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for values that type-check but make no sense."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"config key '{key}': {_get(cfg, key)!r} is not one of {list(choices)}")
    m, t, d = cfg.model, cfg.train, cfg.data
    if not d.modalities:
        raise ConfigError("config key 'data.modalities': at least one modality is required")
    names = [mod.name for mod in d.modalities]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'data.modalities': duplicate modality names {names}")
    for i, mod in enumerate(d.modalities):
        if mod.dim <= 0:
            raise ConfigError(f"config key 'data.modalities[{i}].dim': must be > 0, got {mod.dim}")
        if mod.encoder and mod.encoder not in _CHOICES["model.encoder"]:
            raise ConfigError(f"config key 'data.modalities[{i}].encoder': {mod.encoder!r} is not one of {list(_CHOICES['model.encoder'])}")
        if mod.max_len < 0:
            raise ConfigError(f"config key 'data.modalities[{i}].max_len': must be >= 0")
    for key in ("emotion_labels", "intent_labels"):
        labels = getattr(d, key)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"config key 'data.{key}': need >= 2 distinct labels, got {labels}")
    for key in ("fusion_heads", "heads_emo_to_int", "heads_int_to_emo"):
        heads = getattr(m, key)
        if heads < 1 or m.hidden % heads:
            raise ConfigError(f"config key 'model.{key}': {heads} heads must be >= 1 and divide model.hidden={m.hidden}")
    for key in ("dropout", "input_dropout"):
        if not 0.0 <= getattr(m, key) < 1.0:
            raise ConfigError(f"config key 'model.{key}': must be in [0, 1)")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError("config key 'loss.label_smoothing': must be in [0, 1)")
    if t.epochs < 1 or t.batch_size < 1 or not (math.isfinite(t.lr) and t.lr > 0):
        raise ConfigError("config keys 'train.epochs', 'train.batch_size' must be >= 1 and 'train.lr' > 0")
    if len(t.betas) != 2:
        raise ConfigError("config key 'train.betas': expected two numbers")
    if cfg.scaling.num_workers < 0:
        raise ConfigError("config key 'scaling.num_workers': must be >= 0")
    p = cfg.pseudo
    if not 0.0 <= p.threshold <= 1.0 or not 0.0 <= p.min_confidence <= 1.0:
        raise ConfigError("config keys 'pseudo.threshold' and 'pseudo.min_confidence' must be in [0, 1]")
    for task, table in p.class_thresholds.items():
        labels = {"emotion": d.emotion_labels, "intent": d.intent_labels}.get(task)
        if labels is None or not isinstance(table, dict):
            raise ConfigError(f"config key 'pseudo.class_thresholds.{task}': expected emotion/intent -> {{label: bar}}")
        for label, bar in table.items():
            if label not in labels:
                raise ConfigError(f"config key 'pseudo.class_thresholds.{task}.{label}': unknown {task} label")
            if not 0.0 <= bar <= 1.0:
                raise ConfigError(f"config key 'pseudo.class_thresholds.{task}.{label}': must be a number in [0, 1]")
    if p.rounds < 1 or p.batch_size < 1 or p.topk_per_class < 1:
        raise ConfigError("config keys 'pseudo.rounds', 'pseudo.batch_size', 'pseudo.topk_per_class' must be >= 1")
    if p.actors < 0:
        raise ConfigError("config key 'pseudo.actors': must be >= 1, or 0 for as many as the cluster holds")
    if p.weight <= 0:
        raise ConfigError("config key 'pseudo.weight': must be > 0")
    if p.in_process_below < 0:
        raise ConfigError("config key 'pseudo.in_process_below': must be >= 0 (0 = always Ray Data)")
    validate_tune(cfg.tune)


SEARCH_DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_SWEEP_NAME = re.compile(r"[A-Za-z0-9_.\-]+")   # also what MLflow accepts in a param name


def as_number(value: Any) -> float | int | None:
    """A finite int/float, also from a numeric string (YAML 1.1 reads 1e-4 as one); else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def validate_tune(t: TuneConfig) -> None:
    """Cheap checks of the sweep section; that every swept key exists is checked by tune.search_space."""
    for key in ("num_samples", "grace_period"):
        if getattr(t, key) < 1:
            raise ConfigError(f"config key 'tune.{key}': must be >= 1")
    if t.reduction_factor < 2:
        raise ConfigError("config key 'tune.reduction_factor': must be >= 2")
    if t.max_concurrent_trials < 0:
        raise ConfigError("config key 'tune.max_concurrent_trials': must be >= 0 (0 = no limit)")
    if not (math.isfinite(t.cpus_per_trial) and t.cpus_per_trial > 0) or not t.gpus_per_trial >= 0:
        raise ConfigError("config keys 'tune.cpus_per_trial' must be > 0 and 'tune.gpus_per_trial' >= 0 "
                          "(Ray Tune rejects a trial with no CPU)")
    if not t.name or "/" in t.name or t.name in (".", ".."):
        raise ConfigError(f"config key 'tune.name': {t.name!r} must be a plain directory name")
    if not t.metric:
        raise ConfigError("config key 'tune.metric': must name a reported metric, e.g. val_joint")
    for key, spec in t.search_space.items():
        where = f"tune.search_space.{key}"
        if not _SWEEP_NAME.fullmatch(key):
            raise ConfigError(f"config key '{where}': use a dotted config key or a plain name "
                              "(letters, digits, _ . -)")
        names = spec.get("keys", [key])
        if not names or not all(isinstance(k, str) and _SWEEP_NAME.fullmatch(k) for k in names):
            raise ConfigError(f"config key '{where}.keys': expected a list of dotted config keys, got {names!r}")
        dists = {k: v for k, v in spec.items() if k != "keys"}
        if len(dists) != 1:
            raise ConfigError(f"config key '{where}': expected exactly one distribution "
                              f"({' | '.join(SEARCH_DISTRIBUTIONS)}), got {sorted(dists) or 'none'}")
        (kind, values), = dists.items()
        if kind not in SEARCH_DISTRIBUTIONS:
            raise ConfigError(f"config key '{where}': unknown distribution {kind!r} "
                              f"(one of {list(SEARCH_DISTRIBUTIONS)})")
        if not values:
            raise ConfigError(f"config key '{where}.{kind}': the list is empty")
        if kind in ("choice", "grid"):
            if len(names) > 1 and not all(isinstance(v, list) and len(v) == len(names) for v in values):
                raise ConfigError(f"config key '{where}.{kind}': every value must be a list of {len(names)} "
                                  f"items, one per key of {names}")
            if kind == "grid" and t.search_alg == "optuna":
                raise ConfigError(f"config key '{where}': grid is not supported with tune.search_alg=optuna "
                                  "(use choice)")
            continue
        if len(names) > 1:
            raise ConfigError(f"config key '{where}': keys swept together need choice or grid, not {kind}")
        if len(values) != 2 or any(as_number(v) is None for v in values):
            raise ConfigError(f"config key '{where}.{kind}': expected [lo, hi] (two numbers), got {values!r}")
        lo, hi = (as_number(v) for v in values)
        if not lo < hi:
            raise ConfigError(f"config key '{where}.{kind}': needs lo < hi, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"config key '{where}.loguniform': needs lo > 0, got [{lo}, {hi}]")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"config key '{where}.randint': needs integers [lo, hi), got {values!r}")


def check_required(cfg: ExperimentConfig) -> None:
    """Keys a run cannot do without: data.root, output_dir (seed always has a value)."""
    for key in ("data.root", "output_dir"):
        if not _get(cfg, key):
            raise ConfigError(f"config key '{key}' must be set (in the experiment YAML or as {key}=...)")


# --------------------------------------------------------------------------------------------
# loading: YAML file + overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", yaml-parsed value). `a.b=` gives the empty string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b] = value` for key 'a.b', creating sub-dicts; unknown keys are caught by from_dict."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                require: bool = True) -> ExperimentConfig:
    """Load an experiment YAML, apply `key=value` overrides, type-check and validate.

    Relative `data.root` / `output_dir` in the YAML stay relative to the current directory
    (the commands are run from the repo root, as the README shows), or to $MEIJU_RAY_ROOT when
    that is set (see `anchor_paths`).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"experiment file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    try:
        cfg = ExperimentConfig.from_dict(tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    if os.environ.get(ROOT_ENV):
        cfg = anchor_paths(cfg, os.environ[ROOT_ENV])
    if require:
        check_required(cfg)
    return cfg


ROOT_ENV = "MEIJU_RAY_ROOT"   # base for relative paths when the CWD is not the project dir (Ray jobs)


def anchor_paths(cfg: ExperimentConfig, base: str | os.PathLike) -> ExperimentConfig:
    """A copy with relative output_dir, data.root, tune.teacher_checkpoint, tune.storage and a sqlite
    tracking.uri made absolute against `base`. Paths inside data.* stay relative to data.root, as always.

    load_config applies it with $MEIJU_RAY_ROOT when that is set: a `ray job submit` job runs in a
    temp copy of the working dir, where relative outputs (and a relative sqlite store) would be lost.
    """
    base = Path(os.path.abspath(os.path.expanduser(str(base))))

    def anchor(value: str) -> str:
        return str(base / value) if value and not os.path.isabs(os.path.expanduser(value)) else value

    uri = cfg.tracking.uri.strip()
    if uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///"):]):
        uri = "sqlite:///" + anchor(uri[len("sqlite:///"):])
    storage = cfg.tune.storage if "://" in cfg.tune.storage else anchor(cfg.tune.storage)
    return dataclasses.replace(
        cfg, output_dir=anchor(cfg.output_dir),
        data=dataclasses.replace(cfg.data, root=anchor(cfg.data.root)),
        tune=dataclasses.replace(cfg.tune, teacher_checkpoint=anchor(cfg.tune.teacher_checkpoint), storage=storage),
        tracking=dataclasses.replace(cfg.tracking, uri=uri if uri != cfg.tracking.uri.strip() else cfg.tracking.uri))


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists of dicts become a.0.key (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out
