"""Trained stages as MLflow models: a pyfunc wrapper around the checkpoint directory, the model
registry, and `--checkpoint` references that name a model in MLflow.

A logged model (`runs:/<run_id>/model`, also listed under the experiment's "Logged models") is

    MLmodel, python_model.pkl, requirements.txt, input_example.json, ...
    artifacts/checkpoint/    the checkpoint directory (train.checkpoint): model.pt + config.yaml +
                             meta.json; an ensemble's members are copied inside it (members/<k>/)

and `mlflow.pyfunc.load_model(uri).predict(features)` returns one row per utterance with the
emotion and intent labels and probabilities (train.predict: the input and output columns). Loading
it needs meiju_ray installed (the wrapper class lives here).

A checkpoint reference (`--checkpoint`, `tune.teacher_checkpoint`) is a checkpoint directory, a
downloaded MLflow model directory, or a URI MLflow resolves: `runs:/<run_id>/model`,
`models:/<name>/<version>`, `models:/<name>@<alias>`, `models:/<model_id>`. URIs are downloaded
into a fresh temporary directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from meiju_ray.config import ExperimentConfig
from meiju_ray.fileio import atomic_dir
from meiju_ray.train import checkpoint
from meiju_ray.train.predict import predict_features

log = logging.getLogger("meiju_ray")

ARTIFACT = "checkpoint"  # the checkpoint's key in the pyfunc model's artifacts (and its folder)
DOWNLOADED = ".meiju_ray-checkpoint"  # in a cache dir: the path of the checkpoint inside it
MODEL_NAME = "model"  # the logged model's name in its run: runs:/<run_id>/model
URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "dbfs:/")
REQUIREMENTS = ("torch", "numpy", "pandas", "pyarrow", "pyyaml", "pydantic", "mlflow")


class CheckpointModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a meiju_ray checkpoint: predict(features) -> labels + probabilities."""

    def load_context(self, context):
        self.model, self.cfg, self.meta = checkpoint.load(context.artifacts[ARTIFACT], "cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_features(self.model, self.cfg, model_input, "cpu")


MODEL_CODE = """\
# The MLflow model of a meiju_ray checkpoint (models from code; needs meiju_ray installed).
import mlflow

from meiju_ray.tracking.models import CheckpointModel

mlflow.models.set_model(CheckpointModel())
"""


def bundle(ckpt: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A self-contained copy of a checkpoint in `dst`: a single model's files, or an ensemble with
    its members copied to members/<k>/ (ensemble.json points there)."""
    src, dst = Path(ckpt), Path(dst)
    checkpoint.load_config_from(src)  # fails clearly on anything but a checkpoint
    dst.mkdir(parents=True)
    members = checkpoint.ensemble_members(src)
    for name in (checkpoint.WEIGHTS, checkpoint.CONFIG, checkpoint.META):
        if (src / name).is_file() and not (members and name == checkpoint.WEIGHTS):
            shutil.copy2(src / name, dst / name)
    if members:
        for k, member in enumerate(members):
            bundle(member, dst / "members" / str(k))
        rel = [f"members/{k}" for k in range(len(members))]
        (dst / checkpoint.ENSEMBLE).write_text(json.dumps({"members": rel}, indent=2))
    return dst


def input_example(cfg: ExperimentConfig, n: int = 2, frames: int = 2) -> pd.DataFrame:
    """A small DataFrame in the input format: n utterances, `frames` frames per modality."""
    rng = np.random.default_rng(0)
    table = {"id": [f"utt{k}" for k in range(n)]}
    for m in cfg.data.modalities:
        table[m.name] = [
            np.round(rng.standard_normal((frames, m.dim)), 3).astype(np.float32).tolist()
            for _ in range(n)
        ]
    return pd.DataFrame(table)


def signature(cfg: ExperimentConfig, outputs):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array
    from mlflow.types.utils import _infer_schema

    inputs = Schema(
        [ColSpec(DataType.string, "id", required=False)]
        + [ColSpec(Array(Array(DataType.double)), m.name) for m in cfg.data.modalities]
    )
    return ModelSignature(inputs=inputs, outputs=_infer_schema(outputs))


def pip_requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_checkpoint_model(
    ckpt: str | os.PathLike, run_id: str | None = None, name: str = MODEL_NAME
):
    """Log a checkpoint directory as a pyfunc MLflow model of run `run_id` (default: the active
    run) under `name`; returns MLflow's ModelInfo (model_uri, model_id, ...)."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="meiju-model-") as tmp:
        local = bundle(ckpt, Path(tmp) / ARTIFACT)
        model, cfg, meta = checkpoint.load(local)
        example = input_example(cfg)
        code = Path(tmp) / "meiju_ray_model.py"  # models from code: nothing pickled
        code.write_text(MODEL_CODE)
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(code),
            artifacts={ARTIFACT: str(local)},
            signature=signature(cfg, predict_features(model, cfg, example)),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "meiju_ray": {
                    "ensemble_of": len(checkpoint.ensemble_members(local) or []) or 1,
                    "epoch": meta.get("epoch"),
                    "emotion_labels": cfg.data.emotion_labels,
                    "intent_labels": cfg.data.intent_labels,
                    "modalities": {m.name: m.dim for m in cfg.data.modalities},
                }
            },
        )
    log.info("logged the model as %s (%s)", info.model_uri, info.model_id)
    return info


def register(client, name: str, model_id: str, run_id: str | None, alias: str = "") -> dict:
    """A new version of registered model `name` (created if needed) from logged model
    `model_id`, with `alias` (if set) moved to it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:  # already there
        pass
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s%s", name, version.version, f" (@{alias})" if alias else "")
    return {
        "name": name,
        "version": int(version.version),
        "alias": alias or None,
        "uri": f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}",
    }


def is_uri(ref: str) -> bool:
    return str(ref).startswith(URI_SCHEMES)


def checkpoint_in(directory: str | os.PathLike) -> Path:
    """The checkpoint directory inside a downloaded MLflow model (or `directory` itself)."""
    d = Path(directory)
    if (d / "MLmodel").is_file() and (d / "artifacts" / ARTIFACT).is_dir():
        return d / "artifacts" / ARTIFACT
    return d


def pin(ref: str, tracking_uri: str) -> tuple[str, bool]:
    """The reference to download, and whether it names one immutable thing (then the download is
    cached): a registered version or alias -> models:/<its logged model id> (or its source run);
    runs:/<run_id>/... and models:/<model_id> as they are; anything else as it is, uncached."""
    if ref.startswith("runs:/"):
        return ref, True
    if not ref.startswith("models:/"):
        return ref, False
    rest = ref[len("models:/") :]
    name, at, alias = rest.partition("@")
    if not at:
        name, _, version = rest.partition("/")
        if not version:
            return ref, True  # models:/<model_id>
        if not version.isdigit():
            return ref, False  # e.g. a stage name: it moves
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if at
            else client.get_model_version(name, version)
        )
    except MlflowException as exc:
        raise FileNotFoundError(
            f"checkpoint {ref} (tracking store {tracking_uri}): {exc.message}"
        ) from None
    if getattr(mv, "model_id", None):
        return f"models:/{mv.model_id}", True
    source = str(mv.source)  # models:/<model_id> (register), runs:/<run_id>/... (older versions)
    logged = source.startswith("models:/") and not set("/@") & set(source[len("models:/") :])
    return (source, True) if logged or source.startswith("runs:/") else (ref, False)


def cache_dir(ref: str, tracking_uri: str) -> Path:
    """Where an immutable reference is downloaded: one directory per (store, reference) under the
    system temp dir, reused while it is complete."""
    digest = hashlib.sha256(f"{tracking_uri}\n{ref}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "meiju_ray-checkpoints" / digest


def resolve_checkpoint(
    ref: str | os.PathLike, tracking_uri: str | None = None, dst: str | os.PathLike | None = None
) -> Path:
    """A checkpoint reference (module docstring) -> a local checkpoint directory.

    URIs are resolved in `tracking_uri` (default: MLflow's current one, e.g.
    $MLFLOW_TRACKING_URI; an alias to the version it names now, `pin`) and downloaded into `dst`
    (default: cache_dir for an immutable reference, reused while complete, so the same model
    gives the same path; a new temporary directory otherwise)."""
    ref = str(ref)
    if not is_uri(ref):
        local = checkpoint_in(ref)
        checkpoint.load_config_from(local)  # a clear error for anything that is not one
        return local
    uri = tracking_uri or mlflow.get_tracking_uri()
    pinned, immutable = pin(ref, uri)
    if dst is None and not immutable:
        dst = tempfile.mkdtemp(prefix="meiju-checkpoint-")
    if dst is None:
        target = cache_dir(pinned, uri)
        if (target / DOWNLOADED).is_file():
            return Path((target / DOWNLOADED).read_text())
        with atomic_dir(target) as tmp:
            inside = os.path.relpath(_download(ref, pinned, uri, tmp), tmp)
            (tmp / DOWNLOADED).write_text(str(target / inside))
        return target / inside
    Path(dst).mkdir(parents=True, exist_ok=True)
    return _download(ref, pinned, uri, Path(dst))


def _download(ref: str, pinned: str, uri: str, dst: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=pinned, dst_path=str(dst), tracking_uri=uri
        )
    except MlflowException as exc:
        raise FileNotFoundError(f"checkpoint {ref} (tracking store {uri}): {exc.message}") from None
    found = checkpoint_in(local)
    try:
        checkpoint.load_config_from(found)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"checkpoint {ref}: {pinned} holds neither a meiju_ray MLflow model nor a checkpoint "
            "directory"
        ) from None
    log.info("checkpoint %s (%s) -> %s", ref, pinned, found)
    return Path(found)
