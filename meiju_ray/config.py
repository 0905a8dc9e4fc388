"""Typed experiment configuration: schema and defaults here, values in `experiments/*.yaml`.

Merge order: dataclass defaults <- experiment YAML <- `key.sub=value` overrides. Unknown keys and
wrong types or values raise `ConfigError` naming the dotted key at load time. The resolved config
round-trips through `to_dict` / `from_dict`, which is how it crosses into Ray workers and Tune
trials. The sections are pydantic dataclasses rather than OmegaConf: typed fields, Literal choices
and ranges declared on the fields, errors that carry their location, and ray[default] installs it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic.dataclasses
import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import dataclass_transform

from meiju_ray.errors import ConfigError
from meiju_ray.labels import EMOTIONS, INTENTS
from meiju_ray.sweep.grammar import check_grammar

__all__ = ["ConfigError"]  # re-exported: callers catch config.ConfigError


def _whole_float_to_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def check_device_name(device: str) -> str:
    """A device the training code runs on (torch knows more names, e.g. xla, that it does not);
    ValueError otherwise."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r} (use {DEVICE_NAMES})")
    return device


def _reject_bool(value: Any) -> Any:
    # True == 1 in Python, so pydantic's lax float (and even Literal[1, 2]) would take a bool
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


Str, Bool = StrictStr, StrictBool
Int = Annotated[int, Field(strict=True), BeforeValidator(_whole_float_to_int)]  # 3.0 ok, "3" not
Float = Annotated[float, BeforeValidator(_reject_bool)]  # also "1e-4": YAML 1.1 reads it as a str
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
Probability = Annotated[Float, Field(ge=0, le=1)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]  # a rate of dropping / masking: 1 would drop all
Encoder = Literal["lstm", "textcnn", "pool", "attn"]

# NaN / inf in a config is always a mistake; sections passed in as objects are checked again and
# copied, so from_dict never aliases its input and replace() re-checks a section changed in place
_SECTION_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, revalidate_instances="always")


@dataclass_transform(field_specifiers=(field,))
def _section(cls: type) -> type:
    """A pydantic dataclass whose construction (also by dataclasses.replace) raises ConfigError."""
    cls = pydantic.dataclasses.dataclass(cls, config=_SECTION_CONFIG)
    validating_init = cls.__init__

    @functools.wraps(validating_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validating_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(exc, cls) from None

    cls.__init__ = __init__
    return cls


@_section
class ModalityConfig:
    name: Str  # short tag used in batch keys: "A", "V", "L"
    folder: Str  # sub-folder of the feature dir holding <id>.npy
    dim: PositiveInt  # D of every [T, D] array; a mismatch is an error, never reshaped
    encoder: Literal["", Encoder] = ""  # "" = the model default for this preset
    max_len: NonNegativeInt = 0  # keep at most this many frames (evenly subsampled); 0 = all


DEFAULT_MODALITIES = [
    ModalityConfig("A", "wav2vec", 512),
    ModalityConfig("V", "ResNet-50", 342),
    ModalityConfig("L", "RoBERTa", 768),
]


@_section
class DataConfig:
    root: Str = ""  # required: the Track1/<lang> directory
    annotation_dir: Str = "Annotation"  # holds <split>_files.txt (relative to root)
    feature_dir: Str = "Annotation/features"  # labelled/test features (relative to root)
    unlabeled_dir: Str = "NoAnnotation"  # unlabelled pool (list file optional)
    unlabeled_feature_dir: Str = "NoAnnotation/features"
    unlabeled_truth: Str = "hidden/NoAnnotation_labels.txt"  # withheld pool labels, if any
    cache_dir: Str = ""  # packed shards; "" = <root>/.meiju_packed
    train_split: Str = "Training"
    val_split: Str = "Validation"
    test_split: Str = "Testing"
    modalities: list[ModalityConfig] = field(
        default_factory=lambda: [dataclasses.replace(m) for m in DEFAULT_MODALITIES]
    )
    emotion_labels: list[Str] = field(default_factory=lambda: list(EMOTIONS))
    intent_labels: list[Str] = field(default_factory=lambda: list(INTENTS))
    rows_per_shard: Int = 1024  # rows per packed Parquet shard (= one pseudo-label work item)

    @field_validator("modalities")
    @classmethod
    def _named_uniquely(cls, modalities: list[ModalityConfig]) -> list[ModalityConfig]:
        names = [m.name for m in modalities]
        if not names:
            raise ValueError("at least one modality is required")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate modality names {names}")
        return modalities

    @field_validator("emotion_labels", "intent_labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"need >= 2 distinct labels, got {labels}")
        return labels


@_section
class ModelConfig:
    preset: Literal["paper", "baseline"] = "paper"  # baseline = docs/baseline.md §3 topology
    hidden: Int = 128
    encoder: Encoder = "pool"  # default encoder for every modality
    sharing: Literal["shared", "per_task"] = "shared"  # shared: one encoder stack for both tasks
    fusion_layers: Int = 1
    fusion_heads: PositiveInt = 4
    fusion_ff: Int = 256
    modality_embedding: Bool = True  # learned type embedding per modality token (baseline: none)
    heads_emo_to_int: PositiveInt = 4  # heads of the emotion-queries-attend-to-intent direction
    heads_int_to_emo: PositiveInt = 2  # heads of the intent-queries-attend-to-emotion direction
    interaction: Literal["gate", "plain", "none"] = "gate"  # gate (baseline "normal") | plain (Q +
    #                                  hence) | none
    intent_fusion: Literal["off", "average", "learned"] = "learned"  # final intent = mix(IntC,
    #                                  IntCF)
    classifier: list[Int] = field(default_factory=lambda: [128, 64])
    dropout: Fraction = 0.3
    input_dropout: Fraction = 0.1  # dropout on raw frame features

    @field_validator("fusion_heads", "heads_emo_to_int", "heads_int_to_emo")
    @classmethod
    def _heads_divide_hidden(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden")  # absent when hidden itself failed
        if hidden is not None and hidden % heads:
            raise ValueError(f"{heads} heads must divide model.hidden={hidden}")
        return heads


@_section
class LossConfig:
    emotion_weight: Float = 1.0
    intent_weight: Float = 1.0
    aux_weight: Float = 1.0  # weight of the auxiliary concatenation heads (EmoCF, IntCF)
    label_smoothing: Fraction = 0.0
    class_weights: Literal["none", "balanced"] = "none"  # balanced: inverse training frequency


@_section
class TrainConfig:
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    betas: Annotated[list[Float], Field(min_length=2, max_length=2)] = field(
        default_factory=lambda: [0.9, 0.999]
    )
    weight_decay: NonNegativeFloat = 1e-4
    schedule: Literal["constant", "linear", "cosine"] = "cosine"  # linear (baseline): constant,
    #                                  then linear decay
    constant_epochs: Int = 0  # epochs at full LR before the decay (baseline niter)
    grad_clip: NonNegativeFloat = 1.0  # 0 = off
    patience: NonNegativeInt = 8  # early stopping on validation joint; 0 = off
    bucket_by_length: Bool = True  # group similar lengths so little is spent on padding
    device: Str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: NonNegativeInt = 0  # torch threads per process; 0 = cores / processes on this node
    amp: Bool = False  # autocast on cuda
    # 1: weighted F1 per task; 2: micro F1 (a bare Literal[1, 2] would take True as 1)
    track: Annotated[Literal[1, 2], BeforeValidator(_reject_bool)] = 1

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        check_device_name(device)
        return device


@_section
class WorkersConfig:
    num_workers: NonNegativeInt = 0  # 0 = in-process; >= 1 = Ray Train TorchTrainer workers
    use_gpu: Bool = False
    cpus_per_worker: Float = 1.0
    gpus_per_worker: Float = 1.0
    max_failures: Int = 2  # a dead worker is replaced and training resumes from the
    #                                  latest checkpoint


@_section
class PseudoLabelConfig:
    """Teacher -> pseudo-labels on the unlabelled pool -> student (docs: paper.md §5-6).

    The defaults are the best combination measured (RESULTS.md, section ssl): soft distillation of
    a 3-seed teacher ensemble (teachers=3, trained in parallel on Ray), calibrated, over the whole
    pool (targets=soft, threshold=0, confidence-weighted, T=0.5) into a noised student
    (`augment`). The Track 1 winner's recipe,
    hard labels at a calibrated 0.99 into a fresh student, is experiments/winner_recipe.yaml.
    """

    enabled: Bool = True
    rule: Literal["per_task", "joint", "classwise", "topk", "adaptive", "quantile"] = "per_task"
    #   adaptive, quantile: per-class bars set from the teacher's own confidences on the pool
    threshold: Probability = 0.0  # per task, or both tasks for `joint` (the winner: 0.99)
    class_thresholds: dict[Str, dict[Str, Probability]] = field(default_factory=dict)
    #   classwise: {"emotion": {"fear": 0.85, ...}, "intent": {...}}; unlisted classes: `threshold`
    topk_per_class: PositiveInt = 100  # topk: the k most confident rows predicted as each class
    min_confidence: Probability = 0.0  # topk: and at least this confident
    quantile: Annotated[Float, Field(gt=0, lt=1)] = 0.8  # quantile: per task and predicted class,
    #   keep the rows whose confidence is at least that class's q-quantile
    consistency: Bool = False  # reject (emotion, intent) pairs never seen in training labels
    calibrate: Literal["none", "temperature"] = "temperature"  # fit on validation, then threshold
    weight: PositiveFloat = 1.0  # loss weight of a pseudo-labelled row (gold rows weigh 1)
    weighting: Literal["constant", "confidence"] = "confidence"  # confidence: weight * confidence
    targets: Literal["hard", "soft"] = "soft"  # soft: KL to the calibrated teacher distribution,
    #   for every pool row
    soft_temperature: PositiveFloat = 0.5  # soft targets: teacher probs ** (1/T); T < 1 sharpens
    align: Bool = False  # distribution alignment: teacher probabilities moved toward
    #   the class prior of the labelled rows
    student_init: Literal["scratch", "teacher"] = "scratch"  # teacher: start from its weights
    rounds: PositiveInt = 1  # teacher -> student -> student becomes the next teacher
    epoch_pool_ratio: NonNegativeFloat = 0.0  # each student epoch sees all gold rows and a
    #   fresh draw of this many pool rows per gold row; 0 = every pool row every epoch
    teachers: PositiveInt = 3  # pipeline: an ensemble of this many teacher seeds, trained in
    #   parallel on Ray; its mean probabilities label the pool
    max_rows: Int = 0  # use at most this many unlabelled rows (0 = all)
    actors: NonNegativeInt = 1  # Ray Data inference actors; 0 = as many as the cluster holds
    cpus_per_actor: Float = 0.5  # actors x this <= cluster CPUs - 1 (Ray Data's ListFiles
    #                                  needs 1 CPU)
    in_process_below: NonNegativeInt = 20000  # on a private local Ray, pools with fewer rows are
    #   labelled in this process by the same per-shard code: Ray Data's actor start-up (~5 s on
    #   2 cores) costs more than it saves below ~10-20k Track 1 rows (BENCHMARKS.md §4).
    #   0 = always Ray Data; an attached cluster (ray.address / $RAY_ADDRESS) always uses Ray Data
    gpus_per_actor: Float = 0.0
    batch_size: PositiveInt = 256


@_section
class AugmentConfig:
    """Feature-level noise for a noisy student; each value is a rate. By default (students) every
    row of a run that trains on pool rows is noised and a supervised run (`train`, the pipeline's
    teacher) is untouched; all rates 0 = no noise anywhere."""

    modality_dropout: Fraction = 0.15  # drop a whole modality of a row
    frame_mask: Fraction = 0.2  # mask frames of a [T, D] sequence
    feature_dropout: Fraction = 0.1  # drop single feature values
    gaussian_mix: Fraction = 0.1  # mix Gaussian noise into the features
    apply_to: Literal["pseudo", "all", "students"] = "students"  # which training rows get noise;
    #   students: every row of a run that trains on pool rows, none in a supervised run


@_section
class ConsistencyConfig:
    """Online consistency on the unlabelled pool inside the training loop (FixMatch / UDA form):
    an EMA copy of the model labels the clean view of each pool batch; the model learns those
    targets on a noised (strong) view. weight 0 = off."""

    weight: NonNegativeFloat = 0.0  # loss weight of the pool term (gold CE weighs 1)
    ema_decay: Annotated[Float, Field(ge=0, lt=1)] = 0.99  # EMA teacher: t <- d t + (1 - d) s
    targets: Literal["soft", "hard"] = "soft"  # soft: sharpened teacher probs (UDA); hard: argmax
    temperature: PositiveFloat = 0.5  # soft targets: teacher probs ** (1/T), renormalised
    weighting: Literal["mask", "softmatch"] = "softmatch"  # mask: 1 if conf >= threshold;
    #   softmatch: 1 above the running mean confidence, a Gaussian fall-off below it
    threshold: Probability = 0.95  # mask: FixMatch's confidence bar
    softmatch_momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.99  # of its running statistics
    pool_ratio: PositiveInt = 1  # pool rows per labelled row in each step (FixMatch's mu)
    warmup_epochs: NonNegativeInt = 2  # the weight ramps up linearly over these epochs
    evaluate: Literal["ema", "model"] = "ema"  # which weights are validated and saved
    in_teacher: Bool = False  # pipeline: also train the teacher with it (default: students only;
    #   `train` always uses it when weight > 0)
    strong: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            modality_dropout=0.15, frame_mask=0.2, feature_dropout=0.1, gaussian_mix=0.1
        )
    )  # the strong view's noise (apply_to is ignored: every pool row is noised)


@_section
class PretrainConfig:
    """Self-supervised pre-training of the encoders + fusion before the pipeline's teacher, on the
    labelled rows' and the unlabelled pool's features (SimCLR / SCARF form on feature-level
    views): two noised views of each row, the fused embedding through a projection head, NT-Xent
    between the two views of a row against every other row in the batch. Every model stage of the
    pipeline (each teacher seed, each student) then starts from these encoders and fusion, with
    heads of its own seed. Runs in the pipeline's driver process on train.device. epochs 0 = off
    (the default: on the synthetic ssl world it gained nothing alone and cost 0.024 test joint
    under the default recipe, RESULTS.md section ssl)."""

    epochs: NonNegativeInt = 0
    batch_size: Annotated[Int, Field(ge=2)] = 256  # rows per step: the other 2B-2 views are the
    #   negatives
    lr: PositiveFloat = 1e-3
    temperature: PositiveFloat = 0.1  # NT-Xent: cosine similarity / T
    projection_dim: PositiveInt = 64  # the projection head (discarded after pre-training)
    pool: Bool = True  # also the unlabelled pool's rows (false: the labelled training rows only)
    noise: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            modality_dropout=0.2, frame_mask=0.3, feature_dropout=0.1, gaussian_mix=0.3
        )
    )  # each view's noise (apply_to is ignored: every row is noised)


@_section
class TrackingConfig:
    enabled: Bool = True
    uri: Str = ""  # "" = sqlite:///<abs output_dir/..>/mlflow.db; or http://...
    experiment: Str = "meiju_ray"
    run_name: Str = ""
    register_model: Str = ""  # register the pipeline's final model (and a sweep's best) in
    #                                  the MLflow model registry under this name ("" = don't)
    model_alias: Str = "champion"  # the alias moved to each new registered version, so
    #                                  models:/<name>@champion is the latest ("" = none)


@_section
class RayConfig:
    address: Str = ""  # "" = $RAY_ADDRESS if set, else a private local cluster
    num_cpus: Int = 0  # local cluster size; 0 = all cores
    object_store_mb: Int = 512  # local cluster object store (the default takes 30% of RAM)


@_section
class SweepConfig:
    """`meiju-ray tune`: a Ray Tune sweep over config keys (docs: sweeps_and_clusters.md).

    search_space maps a dotted config key to ONE distribution:
        {choice: [a, b]} | {grid: [a, b]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}
        | {randint: [lo, hi]}
    (randint: hi exclusive). Keys swept together get a name of their own and list them under
    `keys`; each choice is then a list with one value per key:
        head_split: {keys: [model.heads_emo_to_int, model.heads_int_to_emo],
                     choice: [[4, 2], [2, 4]]}
    """

    name: Str = "sweep"  # <output_dir>/tune/<name>; MLflow parent run: "sweep:<name>"
    search_space: dict[Str, dict[Str, list[Any]]] = field(default_factory=dict)
    metric: Str = "val_joint"  # a per-epoch metric of the engine (val_joint, val_emo,
    #                                  val_int, train_loss)
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt = 4  # samples of the space (each grid point: num_samples times)
    max_concurrent_trials: NonNegativeInt = 0  # 0 = as many as the cluster's resources allow
    cpus_per_trial: PositiveFloat = 1.0  # the trial process (with scaling.num_workers >= 1: only
    #   the Train driver); > 0 as Ray Tune rejects a trial with no CPU
    gpus_per_trial: NonNegativeFloat = 0.0
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: Annotated[Int, Field(ge=2)] = 2  # ASHA: keep the best 1/this at each rung
    search_alg: Literal["random", "optuna"] = "random"  # random (incl. grid) | optuna (needs the
    #                                  optuna package)
    trial: Literal["student", "train"] = "student"  # student: gold + re-thresholded
    #                                  pseudo-labels | train: gold labels only
    teacher_checkpoint: Str = ""  # student trials: an existing teacher; "" = train one before
    #                                  the sweep
    storage: Str = ""  # Tune's experiment storage; "" = <output_dir>/tune. With
    #                                  workers on other nodes: a path every node mounts, or
    #                                  s3://bucket/prefix

    @model_validator(mode="after")
    def _valid_search_space(self) -> SweepConfig:
        check_grammar(self.name, self.metric, self.search_space, self.search_alg)
        return self


@_section
class ExperimentConfig:
    seed: Int = 0
    output_dir: Str = ""  # required
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: WorkersConfig = field(default_factory=WorkersConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: SweepConfig = field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _class_thresholds_name_known_labels(self) -> ExperimentConfig:
        labels = {"emotion": self.data.emotion_labels, "intent": self.data.intent_labels}
        for task, table in self.pseudo.class_thresholds.items():
            key = f"pseudo.class_thresholds.{task}"
            if task not in labels:
                raise ConfigError(f"config key '{key}': expected emotion/intent -> {{label: bar}}")
            for label in table:
                if label not in labels[task]:
                    raise ConfigError(f"config key '{key}.{label}': unknown {task} label")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        try:
            return TypeAdapter(cls).validate_python(values)
        except ValidationError as exc:
            raise _config_error(exc, cls) from None


def validate(cfg: ExperimentConfig) -> None:
    """Re-check a config changed in place (attribute assignment is not validated)."""
    ExperimentConfig.from_dict(cfg.to_dict())


# --------------------------------------------------------------------------------------------
# pydantic errors -> one line naming the dotted key; the allowed values of a choice

_EXPECTED = {  # pydantic error type -> what the key expects
    "int_type": "int",
    "float_type": "float",
    "float_parsing": "float",
    "bool_type": "bool",
    "number_type": "a number (not a bool)",
    "finite_number": "a finite number",
    "string_type": "str",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "literal_error": "{expected}",
    "greater_than": "a number > {gt}",
    "greater_than_equal": "a number >= {ge}",
    "less_than": "a number < {lt}",
    "less_than_equal": "a number <= {le}",
    "too_short": "at least {min_length} items",
    "too_long": "at most {max_length} items",
}


def _config_error(exc: ValidationError, section: type) -> ConfigError:
    """The first error of `exc` (raised validating `section`) as a ConfigError naming its key."""
    error = exc.errors(include_url=False)[0]
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    if isinstance(ctx.get("error"), ConfigError):  # a cross-field check that names its own key
        return ctx["error"]
    names = [f.name for f in dataclasses.fields(section)]
    if loc and isinstance(loc[0], int) and loc[0] < len(names):  # a positional argument
        loc = (names[loc[0]], *loc[1:])
    key = _SECTION_KEYS.get(section, section.__name__)
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    if kind == "unexpected_keyword_argument":
        valid = sorted(f.name for f in dataclasses.fields(_type_at(section, loc[:-1])))
        return ConfigError(f"unknown config key '{key}' (valid keys here: {', '.join(valid)})")
    where = f"config key '{key}'" if key else "config"
    if kind in ("missing", "missing_argument"):
        return ConfigError(f"{where}: required, but not given")
    if kind == "value_error":
        return ConfigError(f"{where}: {ctx['error']}")
    why = f"expected {_EXPECTED[kind].format(**ctx)}" if kind in _EXPECTED else error["msg"]
    return ConfigError(f"{where}: {why}, got {error['input']!r}")


def _type_at(section: Any, path: typing.Iterable[str | int]) -> Any:
    """The declared type at a path of field names below `section` (list indices skipped)."""
    for name in (part for part in path if isinstance(part, str)):
        section = typing.get_type_hints(section)[name]
        if typing.get_origin(section) is list:
            section = typing.get_args(section)[0]
    return section


# the key of each section, so that errors of e.g. dataclasses.replace(cfg.train, ...) say train.lr
_SECTION_KEYS = {
    ExperimentConfig: "",
    **{
        section: name
        for name, section in typing.get_type_hints(ExperimentConfig).items()
        if dataclasses.is_dataclass(section)
    },
}


def choices(key: str) -> tuple[Any, ...]:
    """The allowed values of a choice key, e.g. choices("model.encoder") -> ("lstm", ...)."""
    try:
        declared = _type_at(ExperimentConfig, key.split("."))
    except (KeyError, TypeError):
        raise ConfigError(f"unknown config key '{key}'") from None
    if typing.get_origin(declared) is not Literal:
        raise ConfigError(f"config key '{key}' is not a choice")
    return typing.get_args(declared)


def check_required(cfg: ExperimentConfig) -> None:
    """Keys a run cannot do without: data.root, output_dir (seed always has a value)."""
    for key, value in (("data.root", cfg.data.root), ("output_dir", cfg.output_dir)):
        if not value:
            raise ConfigError(
                f"config key '{key}' must be set (in the experiment YAML or as {key}=...)"
            )


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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {text!r}: the value of '{key}' is not valid YAML ({yaml_problem(exc)})"
        ) from None
    return key, value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is {}); ConfigError naming the
    file otherwise."""
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping, not {type(loaded).__name__}")
    return loaded


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b] = value` for key 'a.b', making sub-dicts; from_dict rejects unknown keys."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] | tuple[str, ...] = (),
    require: bool = True,
) -> ExperimentConfig:
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
        tree = read_yaml_mapping(p)
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


ROOT_ENV = "MEIJU_RAY_ROOT"  # base for relative paths when the CWD is not the project (Ray jobs)


def anchor_paths(cfg: ExperimentConfig, base: str | os.PathLike) -> ExperimentConfig:
    """A copy with relative output_dir, data.root, tune.teacher_checkpoint, tune.storage and a
    sqlite tracking.uri made absolute against `base` (URIs such as runs:/... or models:/... stay
    as they are). Paths inside data.* stay relative to data.root, as always.

    load_config applies it with $MEIJU_RAY_ROOT when that is set: a `ray job submit` job runs in
    a temp copy of the working dir, where relative outputs (and a relative sqlite store) would be
    lost.
    """
    base = Path(os.path.abspath(os.path.expanduser(str(base))))

    def anchor(value: str) -> str:
        relative = value and not os.path.isabs(os.path.expanduser(value)) and ":/" not in value
        return str(base / value) if relative else value

    uri = cfg.tracking.uri.strip()
    if uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///") :]):
        uri = "sqlite:///" + anchor(uri[len("sqlite:///") :])
    storage = cfg.tune.storage if "://" in cfg.tune.storage else anchor(cfg.tune.storage)
    return dataclasses.replace(
        cfg,
        output_dir=anchor(cfg.output_dir),
        data=dataclasses.replace(cfg.data, root=anchor(cfg.data.root)),
        tune=dataclasses.replace(
            cfg.tune, teacher_checkpoint=anchor(cfg.tune.teacher_checkpoint), storage=storage
        ),
        tracking=dataclasses.replace(
            cfg.tracking, uri=uri if uri != cfg.tracking.uri.strip() else cfg.tracking.uri
        ),
    )


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
