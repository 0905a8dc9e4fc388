"""What a run records besides its numbers: the code's git commit, a one-paragraph description, the
data as MLflow dataset inputs, the UI link, and the teacher-vs-student figure.

    mlflow.source.git.commit   the commit of the meiju_ray checkout the code runs from (tag, on
                               every run the Tracker opens; absent outside a git checkout)
    mlflow.note.content        the run's description (the UI shows it as the run's notes)
    inputs                     one dataset per split read: name <root name>/<split>, digest = the
                               packing fingerprint, source = the data root; tags: split, rows,
                               fingerprint, context (training / validation / testing / unlabelled)
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import warnings
from pathlib import Path

from meiju_ray.config import ExperimentConfig

log = logging.getLogger("meiju_ray")

GIT_COMMIT, NOTE = "mlflow.source.git.commit", "mlflow.note.content"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def git_commit(where: str = str(PACKAGE_DIR)) -> str | None:
    """HEAD of the git checkout holding `where` (the package), or None when it is not in one."""
    try:
        out = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def source_tags() -> dict[str, str]:
    commit = git_commit()
    return {GIT_COMMIT: commit} if commit else {}


def describe(tracker, text: str) -> None:
    """The run's description (MLflow shows mlflow.note.content as the run's notes)."""
    if tracker.enabled and tracker.run_id:
        tracker.client.set_tag(tracker.run_id, NOTE, " ".join(text.split()))


CONTEXTS = {"train_split": "training", "val_split": "validation", "test_split": "testing"}


def split_manifest(cfg: ExperimentConfig, split: str) -> dict:
    """The packed split's manifest (rows, fingerprint); packs it if needed (cached)."""
    from meiju_ray.data.packing import MANIFEST, pack_split

    return json.loads((pack_split(cfg.data, split) / MANIFEST).read_text())


def log_datasets(tracker, cfg: ExperimentConfig, splits: dict[str, str]) -> dict[str, int]:
    """Each split ({split name: context}) as an MLflow dataset input of the current run; returns
    {split: rows}."""
    if not tracker.enabled:
        return {}
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    root = Path(cfg.data.root).resolve()
    with warnings.catch_warnings():  # MLflow registers its local source twice and says so
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(root))
    schema = Schema(
        [ColSpec(DataType.string, "id")]
        + [ColSpec(Array(Array(DataType.double)), m.name) for m in cfg.data.modalities]
    )
    rows = {}
    for split, context in splits.items():
        manifest = split_manifest(cfg, split)
        rows[split] = int(manifest["rows"])
        dataset = MetaDataset(
            source, name=f"{root.name}/{split}", digest=manifest["fingerprint"], schema=schema
        )
        mlflow.log_input(
            dataset,
            context=context,
            tags={
                "split": split,
                "rows": str(rows[split]),
                "fingerprint": manifest["fingerprint"],
                "root": str(root),
            },
        )
    return rows


def data_splits(cfg: ExperimentConfig, test: bool = False, pool: bool = False) -> dict[str, str]:
    """{split name: dataset context} of the splits a run reads."""
    from meiju_ray.data.layout import UNLABELED

    out = {cfg.data.train_split: "training", cfg.data.val_split: "validation"}
    if test:
        out[cfg.data.test_split] = "testing"
    if pool:
        out[UNLABELED] = "unlabelled"
    return out


def runs_url(tracking_uri: str | None, experiment_id: str | None) -> str | None:
    """The MLflow UI's runs view of an experiment (MLflow 3 otherwise opens a GenAI page): the
    server itself for an http(s) store, `meiju-ray ui`'s default address for a sqlite one."""
    if not tracking_uri or not experiment_id:
        return None
    base = (
        tracking_uri.rstrip("/")
        if tracking_uri.startswith(("http://", "https://"))
        else "http://127.0.0.1:5000"
    )
    return f"{base}/#/experiments/{experiment_id}/runs"


def scores_line(m: dict) -> str:
    return f"joint {m['joint']:.3f} (emotion {m['emo']:.3f}, intent {m['int']:.3f})"
