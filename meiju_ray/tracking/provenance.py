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


# ---- the pipeline's parent run: per-class figure, description ----------------------------------


def per_class_f1(matrix) -> list[float]:
    """Per-class F1 from a confusion matrix (rows = true, columns = predicted); 0 where a class
    is neither predicted nor present."""
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    denom = 2 * tp + (m.sum(0) - tp) + (m.sum(1) - tp)
    return [float(x) for x in np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)]


def class_scores(cfg: ExperimentConfig, checkpoints: dict[str, Path]) -> dict:
    """Per-class F1 of each checkpoint ({name: dir}) on the test split when its labels are known
    (withheld labels: the unbiased number), else on validation."""
    import torch

    from meiju_ray.data.batching import iter_batches
    from meiju_ray.data.packing import load_split
    from meiju_ray.train import checkpoint
    from meiju_ray.train.engine import predict_probs
    from meiju_ray.train.inference import labelled_test_split
    from meiju_ray.train.metrics import confusion

    split, data = cfg.data.test_split, labelled_test_split(cfg)
    if data is None:
        split, data = cfg.data.val_split, load_split(cfg.data, cfg.data.val_split)
    out: dict = {"split": split, "f1": {}}
    for name, ckpt in checkpoints.items():
        model, _, _ = checkpoint.load(ckpt)
        probs = predict_probs(model, iter_batches(data, 64), torch.device("cpu"))
        out["f1"][name] = {
            task: dict(
                zip(
                    labels,
                    per_class_f1(
                        confusion(getattr(data, task), probs[task].argmax(1), len(labels))
                    ),
                )
            )
            for task, labels in (
                ("emotion", cfg.data.emotion_labels),
                ("intent", cfg.data.intent_labels),
            )
        }
    return out


def pipeline_figure(cfg: ExperimentConfig, scores: dict, pseudo: dict | None):
    """Top: per-class F1 of teacher vs student per task. Bottom (with pseudo-labels): how many
    pseudo-labels each class got, and (with withheld pool labels) how many of them were right."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [("emotion", cfg.data.emotion_labels), ("intent", cfg.data.intent_labels)]
    rows = 2 if pseudo else 1
    fig = Figure(figsize=(13, 4.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    names = list(scores["f1"])
    width = 0.8 / max(1, len(names))
    for col, (task, labels) in enumerate(tasks):
        ax, x = axes[0][col], np.arange(len(labels))
        for k, name in enumerate(names):
            values = [scores["f1"][name][task][label] for label in labels]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set(ylim=(0, 1), ylabel="F1", title=f"{task}: per-class F1 ({scores['split']})")
        ax.legend(fontsize=8)
        if not pseudo:
            continue
        ax = axes[1][col]
        counts = [pseudo.get(f"{task}_counts", {}).get(label, 0) for label in labels]
        precision = pseudo.get(f"{task}_precision") or {}
        ax.bar(x, counts, 0.6, color="#9ab", label="pseudo-labels")
        right = [
            c * precision[label] if precision.get(label) is not None else 0
            for c, label in zip(counts, labels)
        ]
        if precision:
            ax.bar(x, right, 0.6, color="#37a", label="of them right (withheld labels)")
        for xi, c, label in zip(x, counts, labels):
            p = precision.get(label)
            ax.text(
                xi,
                c,
                f"{c}" + (f"\n{p:.0%}" if p is not None else ""),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylim(0, 1.25 * max(counts + [1]))  # room for the labels above the bars
        ax.set(ylabel="rows", title=f"{task}: pseudo-labels per class (last round)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def record_pipeline(
    tracker,
    cfg: ExperimentConfig,
    metrics: dict,
    pseudo: dict | None,
    teacher_ckpt: Path,
    student_ckpt: Path,
) -> None:
    """On the pipeline's parent run: per_class.json + per_class.png (teacher vs student per
    class, pseudo-labels per class) and the run's description."""
    if not tracker.enabled or not tracker.run_id:
        return
    checkpoints = {"teacher": teacher_ckpt}
    if Path(student_ckpt) != Path(teacher_ckpt):
        checkpoints["student"] = student_ckpt
    scores = class_scores(cfg, checkpoints)
    tracker.log_dict(scores, "per_class.json")
    tracker.client.log_figure(tracker.run_id, pipeline_figure(cfg, scores, pseudo), "per_class.png")
    t, s = metrics["teacher"], metrics["student"]
    teacher = f"an ensemble of {t['ensemble_of']} seeds" if t.get("ensemble_of") else "one model"
    rounds = len(metrics.get("rounds", []))
    test = (
        f" On the {cfg.data.test_split} split (withheld labels): teacher "
        f"{metrics['teacher_test']['joint']:.3f}, student {metrics['student_test']['joint']:.3f} "
        f"({metrics['gain_joint_test']:+.3f})."
        if "gain_joint_test" in metrics
        else ""
    )
    final = metrics["mlflow"].get("registered_model") or {}
    describe(
        tracker,
        f"Pipeline on {Path(cfg.data.root).resolve()}: the teacher ({teacher}, {cfg.model.preset} "
        f"model) on the labelled {cfg.data.train_split} split, then {rounds} round(s) of "
        f"pseudo-labelling the unlabelled pool ({metrics['n_pseudo']} pseudo-labelled rows, "
        f"{cfg.pseudo.targets} targets) and a student. Validation joint: teacher {t['joint']:.3f}, "
        f"student {s['joint']:.3f} ({metrics['gain_joint']:+.3f}).{test} Final model: "
        f"{metrics['mlflow'].get('final_model') or metrics['final_model']}"
        + (f" (registered as {final['uri']})." if final else ".")
        + " Per-class F1 and pseudo-labels per class: per_class.png.",
    )


def describe_stage(tracker, cfg: ExperimentConfig, name: str, metrics: dict) -> None:
    """A pipeline stage run's description: what was trained on what, the key result, the model."""
    if not tracker.enabled or not tracker.run_id:
        return
    what = (
        f"an ensemble of {metrics['ensemble_of']} seeds (mean probabilities)"
        if metrics.get("ensemble_of")
        else f"the {cfg.model.preset} model (hidden {cfg.model.hidden})"
    )
    extra = (
        f" plus {metrics['n_pseudo']} pseudo-labelled pool rows" if metrics.get("n_pseudo") else ""
    )
    epoch = (
        f" at epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
        if "best_epoch" in metrics and "epochs_run" in metrics
        else ""
    )
    test = f"; withheld test {scores_line(metrics['test'])}" if "test" in metrics else ""
    describe(
        tracker,
        f"Pipeline stage {name}: {what}, trained on the labelled {cfg.data.train_split} split of "
        f"{Path(cfg.data.root).resolve()}{extra}. Best validation {scores_line(metrics)}{epoch}"
        f"{test}. Model: runs:/{tracker.run_id}/model.",
    )


def describe_pseudo(tracker, cfg: ExperimentConfig, info: dict, teacher, out) -> None:
    """A pseudo-labelling run's description: the pool, the teacher, what was selected."""
    accuracy = info.get("emotion_accuracy")
    right = (
        f" (right against the withheld labels: emotion {accuracy:.3f}"
        + (
            f", intent {info['intent_accuracy']:.3f}"
            if isinstance(info.get("intent_accuracy"), float)
            else ""
        )
        + ")"
        if isinstance(accuracy, float)
        else ""
    )
    describe(
        tracker,
        f"Pseudo-labelled {info.get('n_rows')} unlabelled rows of {Path(cfg.data.root).resolve()} "
        f"with the teacher {teacher} ({cfg.pseudo.targets} targets, rule {cfg.pseudo.rule}, "
        f"threshold {cfg.pseudo.threshold}): {info.get('n_selected')} selected (rate "
        f"{info.get('selection_rate') or 0:.3f}){right}. Output: {Path(out).resolve()}.",
    )
