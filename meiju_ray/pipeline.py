"""`meiju-ray pipeline`: teacher -> pseudo-labels -> student -> validation + submission.csv.

    <output_dir>/pretrain/          with pretrain.epochs > 0: the self-supervised encoders + fusion
                                    every model below starts from (checkpoint/, stage.json)
    <output_dir>/teacher/           supervised-only model (checkpoint/, metrics.json, history.json)
    <output_dir>/pseudo_r<k>/       pseudo_labels.parquet + summary.json of round k
    <output_dir>/student_r<k>/      student of round k (labelled + pseudo-labelled rows)
    <output_dir>/metrics.json       teacher and student validation emo/int/joint, gain, pseudo
        counts
    <output_dir>/submission.csv     the final student's predictions for the test split

MLflow: one parent run with nested runs per stage (teacher, pseudo_label_r<k>, student_r<k>);
<output_dir>/pipeline_state.json names the parent, so that a run after a killed one ends the
killed one's runs (KILLED) instead of leaving them RUNNING.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from meiju_ray.config import ExperimentConfig, check_required, to_yaml
from meiju_ray.data.layout import UNLABELED, check_splits
from meiju_ray.data.packing import load_split, pack_split
from meiju_ray.distributed.ensemble import train_teachers
from meiju_ray.distributed.pseudo_label import run_pseudo_label
from meiju_ray.distributed.train import run_train
from meiju_ray.fileio import ensure_writable_dir, locked_dir, write_json_atomic, write_text_atomic
from meiju_ray.pseudo.labelling import SUMMARY_FILE, load_pseudo_rows
from meiju_ray.tracking.provenance import (
    data_splits,
    describe_pseudo,
    describe_stage,
    log_datasets,
    record_pipeline,
)
from meiju_ray.tracking.tracker import (
    Tracker,
    check_reachable,
    end_killed_run,
    resolve_uri,
    summary_metrics,
)
from meiju_ray.train import checkpoint
from meiju_ray.train.consistency import teacher_config
from meiju_ray.train.inference import evaluate_checkpoint, hidden_test_scores, predict_checkpoint
from meiju_ray.train.pretrain import is_active as pretrain_active
from meiju_ray.train.pretrain import run_pretrain
from meiju_ray.train.reference import logistic_reference

log = logging.getLogger("meiju_ray")
SCORES = ("emo", "int", "joint")


def _stage_cfg(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / name))


def _train_stage(
    cfg: ExperimentConfig, tracker: Tracker, name: str, extra=None, init_from: Path | None = None
) -> dict:
    """Train one model in <output_dir>/<name> inside a nested MLflow run; log curves and artifacts.
    `init_from`: a checkpoint whose weights the model starts from (pseudo.student_init=teacher,
    or the pre-trained backbone)."""
    stage = _stage_cfg(cfg, name)
    with tracker.run(name, nested=True, tags={"stage": name.split("_")[0]}):
        tracker.log_config(stage)

        def on_epoch(epoch: int, metrics: dict, is_best: bool) -> None:
            tracker.log_epoch(epoch, metrics)

        metrics = run_train(stage, extra_train=extra, on_epoch=on_epoch, init_from=init_from)
        ckpt = Path(stage.output_dir) / "checkpoint"
        _score_stage(cfg, tracker, name, ckpt, metrics)
        tracker.log_artifact(Path(stage.output_dir) / "metrics.json")
        _logged_model(tracker, ckpt, metrics, stage, name)
    return metrics


def _logged_model(
    tracker: Tracker, ckpt: Path, metrics: dict, cfg: ExperimentConfig, name: str
) -> None:
    """The stage's checkpoint as an MLflow model of its run (runs:/<run>/model), and the run's
    description; the model's ids are kept in `metrics` (in memory) for the registry."""
    info = tracker.log_model(ckpt)
    if info is not None:
        metrics["_mlflow_model"] = {"model_id": info.model_id, "run_id": tracker.run_id}
        describe_stage(tracker, cfg, name, metrics)


def _score_stage(
    cfg: ExperimentConfig, tracker: Tracker, name: str, ckpt: Path, metrics: dict
) -> None:
    """Score a stage's checkpoint into `metrics` and its MLflow run: validation emo/int/joint
    (kept where training already reported them) and confusion matrices, and the test split where
    the data keeps its labels back."""
    val = evaluate_checkpoint(ckpt, split=cfg.data.val_split)
    for k in SCORES:
        metrics.setdefault(k, val[k])
    test = hidden_test_scores(ckpt)  # None unless the data keeps test labels back
    if test is not None:
        metrics["test"] = {k: test[k] for k in SCORES}
        tracker.log_metrics({f"test_{k}": test[k] for k in SCORES})
    tracker.log_metrics(
        {f"best_val_{k}": metrics[k] for k in SCORES} | {"n_pseudo": metrics.get("n_pseudo", 0)}
    )
    for task, labels in (("emotion", cfg.data.emotion_labels), ("intent", cfg.data.intent_labels)):
        tracker.log_confusion(
            val[f"confusion_{task}"],
            labels,
            f"{name}: {task} (validation)",
            f"confusion_{task}.png",
        )


def _pretrain_stage(cfg: ExperimentConfig, tracker: Tracker) -> dict:
    """Self-supervised pre-training of encoders + fusion (train/pretrain.py) into
    <output_dir>/pretrain/checkpoint; MLflow: a nested run "pretrain" with its loss per epoch."""
    out = Path(cfg.output_dir) / "pretrain"
    with tracker.run("pretrain", nested=True, tags={"stage": "pretrain"}):
        tracker.log_config(_stage_cfg(cfg, "pretrain"))
        result = run_pretrain(cfg, out, on_epoch=tracker.log_epoch)
        tracker.log_metrics(
            {"pretrain_rows": result["rows"], "pretrain_final_loss": result["loss_last"]}
        )
    return result


def _ensemble_stage(
    cfg: ExperimentConfig, tracker: Tracker, n: int, init_from: Path | None = None
) -> dict:
    """N teacher seeds in parallel on Ray (distributed.ensemble), scored as one ensemble; MLflow:
    a nested run "teacher" with the ensemble's scores and each member's."""
    out = Path(cfg.output_dir)
    with tracker.run("teacher", nested=True, tags={"stage": "teacher", "ensemble": str(n)}):
        tracker.log_config(_stage_cfg(cfg, "teacher"))
        ckpt, members = train_teachers(cfg, out, n, init_from)
        metrics = {
            "ensemble_of": n,
            "members": [{k: m[k] for k in SCORES} for m in members],
            "majority_baseline": members[0]["majority_baseline"],
            "n_pseudo": 0,
        }
        _score_stage(cfg, tracker, "teacher", ckpt, metrics)
        if "test" in metrics:  # what each seed scores alone, beside the ensemble
            for k, member in enumerate(checkpoint.ensemble_members(ckpt) or []):
                scores = hidden_test_scores(member)
                metrics["members"][k]["test"] = {s: scores[s] for s in SCORES}
        for k, m in enumerate(members):
            tracker.log_metrics({f"member{k}_val_joint": m["joint"]})
        write_json_atomic(Path(ckpt).parent / "metrics.json", metrics)
        tracker.log_artifact(Path(ckpt).parent / "metrics.json")
        _logged_model(tracker, ckpt, metrics, cfg, "teacher")
    return metrics


def _pseudo_stage(cfg: ExperimentConfig, tracker: Tracker, teacher_ckpt: Path, name: str) -> dict:
    out = Path(cfg.output_dir) / name
    with tracker.run(name, nested=True, tags={"stage": "pseudo_label"}):
        info = run_pseudo_label(cfg, teacher_ckpt, out)
        tracker.log_metrics(summary_metrics(info))
        tracker.log_artifact(out / SUMMARY_FILE)
        describe_pseudo(tracker, cfg, info, teacher_ckpt, out)
    return info


STAGE_FILE = "stage.json"  # in each finished stage's directory: its fingerprint and its result
# what a model stage's result depends on (tracking, ray, tune and output_dir do not change it)
MODEL_SECTIONS = (
    "seed",
    "data",
    "model",
    "loss",
    "train",
    "scaling",
    "augment",
    "consistency",
    "pretrain",
)


def uses_pool(cfg: ExperimentConfig) -> bool:
    """Whether a stage reads the unlabelled pool: pseudo-labels, online consistency, or
    pre-training on it."""
    return (
        cfg.pseudo.enabled
        or cfg.consistency.weight > 0
        or (pretrain_active(cfg) and cfg.pretrain.pool)
    )


def fingerprint(cfg: ExperimentConfig, sections: tuple[str, ...], *upstream: str) -> str:
    """sha256 of the config sections a stage's result depends on, the packed caches of the splits
    it reads (their directory names carry the packing key: the feature files' sizes and times) and
    the fingerprints of the stages it consumes."""
    tree = cfg.to_dict()
    caches = [
        pack_split(cfg.data, split).name
        for split in (cfg.data.train_split, cfg.data.val_split)
        + ((UNLABELED,) if uses_pool(cfg) else ())
    ]
    payload = {"config": {k: tree[k] for k in sections}, "caches": caches, "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reuse_or_run(stage_dir: Path, name: str, fp: str, resume: bool, run: Callable[[], dict]):
    """`run()` the stage, or with `resume` hand back the result of the finished run in stage_dir
    whose fingerprint is the same. The marker is written only once the stage has finished, and
    removed before it runs again, so a stage a crash interrupted is never taken for finished."""
    marker = stage_dir / STAGE_FILE
    if resume and marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("fingerprint") == fp:
            log.info("[resume] %s: finished before with the same config and data: reused", name)
            return saved["result"]
        log.info("[resume] %s: its config or data changed since it ran: running it again", name)
    elif resume:
        log.info("[resume] %s: no finished run to reuse: running it", name)
    marker.unlink(missing_ok=True)
    result = run()
    write_json_atomic(marker, {"fingerprint": fp, "result": result})
    return result


def run_pipeline(cfg: ExperimentConfig, resume: bool = False) -> dict:
    """Run every stage; returns what metrics.json holds. `resume`: reuse every stage that finished
    in output_dir with the same fingerprint (config sections it depends on, data, upstream
    stages), e.g. after a crash in the student the teacher and pseudo-labels are not redone."""
    check_required(cfg)
    out = ensure_writable_dir(cfg.output_dir)
    tracker = Tracker(cfg)
    if tracker.enabled:
        check_reachable(resolve_uri(cfg))  # fail fast, before any training
    with locked_dir(out):  # one pipeline per output_dir at a time
        end_killed_pipeline_runs(tracker, out)
        preflight(cfg)
        return _run_pipeline(cfg, out, tracker, resume)


STATE_FILE = "pipeline_state.json"  # the MLflow parent run of the latest pipeline in output_dir


def end_killed_pipeline_runs(tracker: Tracker, out: Path) -> list[str]:
    """A pipeline killed in this output_dir (SIGKILL, OOM, a lost node) left its MLflow parent
    and stage runs RUNNING: they end KILLED now, as `tune --resume` ends a sweep's (we hold the
    output_dir's lock, so no live pipeline owns them). Returns the run ids ended."""
    state_file = out / STATE_FILE
    if not tracker.enabled or not state_file.is_file():
        return []
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    if state.get("tracking_uri") != tracker.uri or not state.get("parent_run_id"):
        return []
    ended = end_killed_run(tracker.client, state["parent_run_id"])
    if ended:
        log.warning(
            "the previous pipeline in %s was killed: its %d MLflow run(s) still RUNNING "
            "(parent %s) end as KILLED",
            out,
            len(ended),
            state["parent_run_id"],
        )
    return ended


def preflight(cfg: ExperimentConfig) -> None:
    """Everything the stages will read, checked (and packed, which reads every feature file)
    before the teacher's first epoch: the labelled splits, the test split, and the pool when a
    stage uses it. A missing or empty pool, a leak between splits or a bad file fails here."""
    check_splits(cfg.data, test=True, pool=uses_pool(cfg))
    progress = lambda msg: log.info(msg)  # noqa: E731
    splits = [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split]
    for split in splits + ([UNLABELED] if uses_pool(cfg) else []):
        pack_split(cfg.data, split, progress)


def _run_pipeline(cfg: ExperimentConfig, out: Path, tracker: Tracker, resume: bool) -> dict:
    t0 = time.time()
    stage_seconds: dict[
        str, float
    ] = {}  # where the wall time goes (metrics.json, BENCHMARKS.md end to end)

    def lap(name: str, since: float) -> float:
        now = time.time()
        stage_seconds[name] = round(now - since, 2)
        return now

    # Ray starts on first use (Ray Train workers, Ray Data pseudo-labelling), not up front: a local
    # run
    # that needs neither (scaling.num_workers=0, a pool below pseudo.in_process_below) never pays
    # for it
    t = t0
    with tracker.run(
        cfg.tracking.run_name or f"pipeline:{out.name}", tags={"stage": "pipeline"}
    ) as parent_id:
        if parent_id:  # a later run ends this one's runs should this process be killed
            write_json_atomic(
                out / STATE_FILE, {"parent_run_id": parent_id, "tracking_uri": tracker.uri}
            )
        tracker.log_config(cfg)
        log_datasets(tracker, cfg, data_splits(cfg, test=True, pool=uses_pool(cfg)))
        log.info("[0] reference: logistic regression on mean+max pooled features")
        reference = logistic_reference(
            load_split(cfg.data, cfg.data.train_split),
            load_split(cfg.data, cfg.data.val_split),
            cfg.train.track,
            seed=cfg.seed,
        )
        tracker.log_metrics({f"reference_{k}": v for k, v in reference.items()})
        t = lap("reference", t)
        log.info(
            "reference: val emo %.4f int %.4f joint %.4f",
            reference["emo"],
            reference["int"],
            reference["joint"],
        )
        backbone, pretrained, pretrain_fp = None, None, ()
        if pretrain_active(cfg):
            log.info("[1a] self-supervised pre-training: encoders + fusion, labelled + pool rows")
            # of the pseudo section only the pool cap reaches it: a new threshold reuses it
            fp = fingerprint(
                cfg,
                ("seed", "data", "model", "train", "pretrain"),
                f"max_rows={cfg.pseudo.max_rows}",
            )
            pretrain_fp = (fp,)
            pretrained = reuse_or_run(
                out / "pretrain", "pretrain", fp, resume, partial(_pretrain_stage, cfg, tracker)
            )
            backbone = out / "pretrain" / "checkpoint"
            t = lap("pretrain", t)
        log.info("[1] teacher: labelled data only")
        teacher_cfg = teacher_config(cfg)
        n_teachers = cfg.pseudo.teachers if cfg.pseudo.enabled else 1
        # with pre-training, the teacher starts from its backbone: a new backbone, a new teacher
        upstream = fingerprint(teacher_cfg, MODEL_SECTIONS, f"teachers={n_teachers}", *pretrain_fp)
        teacher = reuse_or_run(
            out / "teacher",
            "teacher",
            upstream,
            resume,
            lambda: (
                _ensemble_stage(teacher_cfg, tracker, n_teachers, backbone)
                if n_teachers > 1
                else _train_stage(teacher_cfg, tracker, "teacher", init_from=backbone)
            ),
        )
        t = lap("teacher", t)
        current_ckpt = out / "teacher" / "checkpoint"
        rounds: list[dict] = []
        student = teacher
        if cfg.pseudo.enabled:
            for r in range(1, cfg.pseudo.rounds + 1):
                log.info("[2] round %d: pseudo-labelling the unlabelled pool", r)
                upstream = fingerprint(cfg, ("data", "pseudo"), upstream, f"round={r}")
                info = reuse_or_run(
                    out / f"pseudo_r{r}",
                    f"pseudo_r{r}",
                    upstream,
                    resume,
                    partial(_pseudo_stage, cfg, tracker, current_ckpt, f"pseudo_r{r}"),
                )
                t = lap(f"pseudo_r{r}", t)
                extra = load_pseudo_rows(cfg, out / f"pseudo_r{r}")
                t = lap(f"load_pseudo_rows_r{r}", t)
                if len(extra) == 0:
                    log.warning(
                        "round %d: no pseudo-label passed the selection; the student trains "
                        "on gold labels only",
                        r,
                    )
                log.info(
                    "[3] round %d: student on %d pseudo-labelled rows + the labelled data",
                    r,
                    len(extra),
                )
                init = backbone  # None without pre-training: from scratch
                if cfg.pseudo.student_init == "teacher":  # an ensemble: its first member
                    init = (checkpoint.ensemble_members(current_ckpt) or [current_ckpt])[0]
                upstream = fingerprint(cfg, (*MODEL_SECTIONS, "pseudo"), upstream)
                student = reuse_or_run(
                    out / f"student_r{r}",
                    f"student_r{r}",
                    upstream,
                    resume,
                    partial(_train_stage, cfg, tracker, f"student_r{r}", extra, init),
                )
                t = lap(f"student_r{r}", t)
                current_ckpt = out / f"student_r{r}" / "checkpoint"
                rounds.append(
                    {
                        "round": r,
                        "n_pseudo": len(extra),
                        **{k: student[k] for k in SCORES},
                        "pseudo": {
                            k: info.get(k)
                            for k in (
                                "n_rows",
                                "n_selected",
                                "selection_rate",
                                "n_emotion_kept",
                                "n_intent_kept",
                                "emotion_accuracy",
                                "intent_accuracy",
                                "temperature",
                            )
                        },
                    }
                )
        log.info("[4] predicting %s with %s", cfg.data.test_split, current_ckpt.parent.name)
        submission = predict_checkpoint(
            current_ckpt, out / "submission.csv", split=cfg.data.test_split
        )
        lap("predict", t)
        final, registered = student.get("_mlflow_model"), None
        if final and cfg.tracking.register_model:  # the final model, in the registry
            from meiju_ray.tracking.models import register  # imports MLflow

            registered = register(
                tracker.client,
                cfg.tracking.register_model,
                final["model_id"],
                final["run_id"],
                cfg.tracking.model_alias,
            )
        metrics = {
            "teacher": {k: teacher[k] for k in SCORES}
            | {k: teacher[k] for k in ("ensemble_of", "members") if k in teacher},
            "student": {k: student[k] for k in SCORES},
            "gain_joint": student["joint"] - teacher["joint"],
            # on the test split with its withheld labels, where the data has them (validation
            # picked the best epoch, so its gain is biased upwards)
            **(
                {
                    "teacher_test": teacher["test"],
                    "student_test": student["test"],
                    "gain_joint_test": student["test"]["joint"] - teacher["test"]["joint"],
                }
                if "test" in teacher and "test" in student
                else {}
            ),
            "n_pseudo": rounds[-1]["n_pseudo"] if rounds else 0,
            "rounds": rounds,
            **({"pretrain": pretrained} if pretrained else {}),
            "reference_logistic": reference,
            "majority_baseline": teacher["majority_baseline"],
            "final_model": str(current_ckpt),
            "submission": str(submission),
            "mlflow": {
                "tracking_uri": tracker.uri,
                "experiment": cfg.tracking.experiment,
                "experiment_id": tracker.client.get_run(parent_id).info.experiment_id
                if parent_id
                else None,
                "parent_run_id": parent_id,
                "final_model": f"runs:/{final['run_id']}/model" if final else None,
                "registered_model": registered,
            },
            "seconds": round(time.time() - t0, 1),
            "stage_seconds": stage_seconds,
        }
        write_json_atomic(out / "metrics.json", metrics)
        write_text_atomic(out / "config.yaml", to_yaml(cfg))  # with the results it produced
        tracker.log_metrics(
            {f"teacher_{k}": teacher[k] for k in SCORES}
            | {f"student_{k}": student[k] for k in SCORES}
            | {"gain_joint": metrics["gain_joint"], "n_pseudo": metrics["n_pseudo"]}
            | (
                {"gain_joint_test": metrics["gain_joint_test"]}
                if "gain_joint_test" in metrics
                else {}
            )
        )
        tracker.log_artifact(out / "metrics.json")
        tracker.log_artifact(submission)
        # per-class F1 of teacher vs student, pseudo-labels per class; the run's description
        record_pipeline(
            tracker,
            cfg,
            metrics,
            info if rounds else None,
            out / "teacher" / "checkpoint",
            current_ckpt,
        )
    return metrics
