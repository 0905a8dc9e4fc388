"""`meiju-ray tune`: a Ray Tune sweep over config keys, with ASHA, MLflow and a sweep report.

    teacher (trained once, or tune.teacher_checkpoint) -> run_pseudo_label once
                 -> stored calibrated probs
    every trial: sampled values -> config -> selection.select on the stored probs (no re-inference)
                 -> training.fit_local (or Ray Train with scaling.num_workers >= 1)
                 -> tune.report per epoch
    <output_dir>/tune/<name>/   Tune's experiment dir (resume with --resume)
    <output_dir>/trials.csv     one row per trial; plots/*.png; best.yaml; best_model/; sweep.json

MLflow: a parent run "sweep:<name>" holds the teacher and pseudo-label stages and one child run per
trial (params = the swept values, metrics per epoch, tag stopped_early; `sweep_tracking`). Trials
run with their CWD in the trial directory, so every path they see is made absolute first. This is
the only module that knows Tuner/TuneConfig; trials.csv, plots and best.yaml come from
`sweep_report`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from meiju_ray.config import (
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    anchor_paths,
    check_required,
)
from meiju_ray.data.layout import UNLABELED
from meiju_ray.data.packing import PackedSplit, load_split
from meiju_ray.distributed.cluster import init_ray
from meiju_ray.distributed.ensemble import train_teachers
from meiju_ray.distributed.pseudo_label import run_pseudo_label
from meiju_ray.distributed.train import STATE_FILE, build_trainer, pool_dataset, run_train
from meiju_ray.fileio import atomic_dir, ensure_writable_dir, write_json_atomic
from meiju_ray.model.network import build_model
from meiju_ray.pseudo.labelling import PSEUDO_FILE, SUMMARY_FILE, pseudo_rows
from meiju_ray.pseudo.selection import allowed_pairs_from, class_prior, select
from meiju_ray.sweep.grammar import bounds, distribution, is_encoded, targets
from meiju_ray.sweep.report import (
    RunningBest,
    pick_best,
    plot_sweep,
    trial_rows,
    verdict,
    write_best_yaml,
    write_trials_csv,
)
from meiju_ray.sweep.space import (
    check_space,
    describe,
    ended_naturally,
    expand_params,
    expected_trials,
    trial_config,
)
from meiju_ray.tracking.models import resolve_checkpoint
from meiju_ray.tracking.provenance import data_splits, log_datasets
from meiju_ray.tracking.provenance import describe as describe_run
from meiju_ray.tracking.sweep import TrialRuns, end_interrupted_runs, register_model, sweep_run
from meiju_ray.tracking.tracker import Tracker, check_reachable, resolve_uri, summary_metrics
from meiju_ray.train import checkpoint
from meiju_ray.train.consistency import teacher_config
from meiju_ray.train.engine import unwrap
from meiju_ray.train.local import fit_local, load_pool, load_train_val

log = logging.getLogger("meiju_ray")
HEARTBEAT_S = 30.0  # at most one "sweep: k/N trials done, ..." line per this many seconds


# --------------------------------------------------------------------------------------------
# search space: YAML -> Tune domains, checked before any trial starts


def search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """cfg.tune.search_space -> Tune's param_space (one flat entry per YAML key), after every value
    a trial can get has been type-checked (`sweep.space.check_space`)."""
    from ray import tune

    check_space(cfg)
    out: dict[str, Any] = {}
    for key, spec in cfg.tune.search_space.items():
        kind, values = distribution(spec)
        if kind in ("choice", "grid"):
            values = [json.dumps(v) for v in values] if is_encoded(spec) else list(values)
            out[key] = tune.choice(values) if kind == "choice" else tune.grid_search(values)
        else:
            lo, hi = bounds(spec)
            domain = {
                "uniform": tune.uniform,
                "loguniform": tune.loguniform,
                "randint": tune.randint,
            }[kind]
            out[key] = domain(int(lo), int(hi)) if kind == "randint" else domain(lo, hi)
    return out


# --------------------------------------------------------------------------------------------
# one trial (runs in a Tune trial actor)


def _trial(params: dict, base: dict, data: dict) -> None:
    """Tune function trainable: sampled values -> config -> (pseudo-labels) -> training, reported
    per epoch."""
    import ray

    cfg = trial_config(base, params)
    train = ray.get(data["train"])
    extra = None
    if data.get("pool") is not None and cfg.pseudo.enabled:
        pool = ray.get(data["pool"])
        sel = select(
            pool["emotion_probs"],
            pool["intent_probs"],
            cfg.pseudo,
            cfg.data.emotion_labels,
            cfg.data.intent_labels,
            pool["allowed"],
            pool["priors"],
        )
        extra = pseudo_rows(pool["split"], sel, cfg.pseudo)
    n_pseudo = 0 if extra is None else len(extra)
    if n_pseudo:
        train = PackedSplit.concat([train, extra])
    if cfg.scaling.num_workers >= 1:
        _fit_distributed(cfg, train, data["val"])
    else:
        _fit_in_trial(cfg, train, ray.get(data["val"]), n_pseudo)


def _fit_in_trial(
    cfg: ExperimentConfig, train: PackedSplit, val: PackedSplit, n_pseudo: int
) -> None:
    """train.local.fit_local with a report per epoch; an epoch that is a new best carries its
    weights as a checkpoint, and Tune keeps the best one (CheckpointConfig in run_tune)."""
    from ray import tune

    def on_epoch(epoch: int, metrics: dict, is_best: bool) -> None:
        row = {**metrics, "is_best": is_best, "n_pseudo": n_pseudo}
        if not is_best:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = checkpoint.save(
                Path(tmp) / "model",
                unwrap(model).state_dict(),
                cfg,
                {
                    "epoch": epoch + 1,
                    "val": {k: metrics[f"val_{k}"] for k in ("emo", "int", "joint")},
                },
            )
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(model_dir)))

    model = build_model(cfg)
    fit_local(cfg, train, val, on_epoch, model=model, pool=load_pool(cfg))


def _fit_distributed(cfg: ExperimentConfig, train: PackedSplit, val_ref) -> None:
    """Ray Train inside Tune (Train V2): this trial drives a TorchTrainer; rank 0's reports reach
    Tune."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    loop_config = {"cfg": cfg.to_dict(), "train": ray.put(train), "val": val_ref}
    ctx = tune.get_context()
    storage: Path | str = Path(ctx.get_trial_dir()) / "ray_train"
    if "://" in cfg.tune.storage:  # cloud storage: Train's checkpoints go there too
        storage = (
            f"{cfg.tune.storage.rstrip('/')}/{ctx.get_experiment_name()}/"
            f"{ctx.get_trial_name()}/ray_train"
        )
    datasets = {"pool": pool_dataset(cfg)} if cfg.consistency.weight > 0 else None
    result = build_trainer(cfg, loop_config, storage, [TuneReportCallback()], datasets).fit()
    if result.error:
        raise result.error


class SweepInterrupted(KeyboardInterrupt):
    """Tune stopped on SIGINT with trials unfinished; its state is saved for --resume. A
    KeyboardInterrupt, so the sweep's MLflow run ends KILLED rather than FAILED."""


# --------------------------------------------------------------------------------------------
# driver: teacher + pseudo-labels once, the sweep, the report


def _teacher_and_pool(cfg: ExperimentConfig, tracker, out: Path, train: PackedSplit) -> dict:
    """Teacher (given or trained once) -> run_pseudo_label once -> the pool with its calibrated
    probs."""
    import pyarrow.parquet as pq

    teacher = (
        resolve_checkpoint(cfg.tune.teacher_checkpoint, tracker.uri or resolve_uri(cfg))
        if cfg.tune.teacher_checkpoint  # a directory, runs:/... or models:/...
        else out / "teacher" / "checkpoint"
    )
    trained = (teacher / checkpoint.WEIGHTS).is_file() or (teacher / checkpoint.ENSEMBLE).is_file()
    if not cfg.tune.teacher_checkpoint and not trained:
        log.info("[1] teacher: labelled data only -> %s", teacher.parent)
        teacher_cfg = teacher_config(dataclasses.replace(cfg, output_dir=str(teacher.parent)))
        with tracker.run("teacher", nested=True, tags={"stage": "teacher"}):
            tracker.log_config(teacher_cfg)
            if cfg.pseudo.teachers > 1:  # an ensemble of seeds, in parallel on Ray
                train_teachers(teacher_cfg, out, cfg.pseudo.teachers)
            else:
                run_train(teacher_cfg, on_epoch=lambda e, m, best: tracker.log_epoch(e, m))
            tracker.log_model(teacher)
    pseudo = out / "pseudo"
    summary = (
        json.loads((pseudo / SUMMARY_FILE).read_text()) if (pseudo / SUMMARY_FILE).is_file() else {}
    )
    if summary.get("teacher") != str(teacher):
        log.info("[2] pseudo-labelling the unlabelled pool once with %s", teacher)
        with tracker.run("pseudo_label", nested=True, tags={"stage": "pseudo_label"}):
            info = run_pseudo_label(cfg, teacher, pseudo)
            tracker.log_metrics(summary_metrics(info))
            tracker.log_artifact(pseudo / SUMMARY_FILE)
    table = pq.read_table(pseudo / PSEUDO_FILE, columns=["id", "emotion_probs", "intent_probs"])
    split = load_split(cfg.data, UNLABELED)
    where = {u: i for i, u in enumerate(table.column("id").to_pylist())}
    missing = [u for u in split.ids if u not in where]
    if missing:
        raise ValueError(
            f"{pseudo / PSEUDO_FILE} has no probabilities for {len(missing)} pool rows "
            f"(e.g. {missing[0]!r}); delete {pseudo} to recompute it"
        )
    order = np.array([where[u] for u in split.ids], dtype=np.int64)

    def probs(name: str) -> np.ndarray:
        col = table.column(name).combine_chunks()
        return col.flatten().to_numpy().reshape(len(col), -1)[order]

    allowed = allowed_pairs_from(
        train.emotion, train.intent, len(cfg.data.emotion_labels), len(cfg.data.intent_labels)
    )
    return {
        "split": split,
        "emotion_probs": probs("emotion_probs"),
        "intent_probs": probs("intent_probs"),
        "allowed": allowed,
        "priors": {
            "emotion": class_prior(train.emotion, len(cfg.data.emotion_labels)),
            "intent": class_prior(train.intent, len(cfg.data.intent_labels)),
        },
        "teacher": str(teacher),
    }


def _check_resources(cfg: ExperimentConfig, attached: bool, storage: str) -> dict[str, float]:
    """Resources of one trial; refuse what a local cluster can never give (Tune would wait
    forever)."""
    import ray

    t, s = cfg.tune, cfg.scaling
    per_trial = {"CPU": t.cpus_per_trial, **({"GPU": t.gpus_per_trial} if t.gpus_per_trial else {})}
    need = {
        "CPU": t.cpus_per_trial + (s.num_workers * s.cpus_per_worker if s.num_workers else 0),
        "GPU": t.gpus_per_trial
        + (s.num_workers * s.gpus_per_worker if s.num_workers and s.use_gpu else 0),
    }
    have = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        msg = (
            f"one trial needs {need} (tune.cpus_per_trial/gpus_per_trial + scaling.*) but the Ray "
            f"cluster has {{CPU: {have.get('CPU', 0):g}, GPU: {have.get('GPU', 0):g}}}"
        )
        if not attached:
            raise ValueError(msg + "; no trial could ever start")
        log.warning("%s; waiting for the autoscaler to add nodes", msg)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if (nodes > 1 or short) and "://" not in storage:
        log.warning(
            "tune storage %s is a local path, but trials may run on other nodes: it must be a "
            "mount every node shares (or set tune.storage=s3://...), or their checkpoints are lost",
            storage,
        )
    return per_trial


def _progress_callback(cfg: ExperimentConfig):
    """A Tune callback for the console: a line per finished trial, `trial k/N done: <metric>
    (best so far ..., <swept values>)`, and between trial ends at most one heartbeat line per
    HEARTBEAT_S seconds (trials running, epochs reported, best so far)."""
    from ray.tune import Callback

    t = cfg.tune

    class TrialProgress(Callback):
        def __init__(self):
            self.best, self.n_done, self.last_beat = RunningBest(t.mode), 0, time.time()
            self.n_trials, self.epochs, self.history = expected_trials(t), {}, {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            epoch = int(result.get("epoch", iteration - 1)) + 1
            self.epochs[trial] = epoch
            self.history.setdefault(trial, []).append(
                {k: result.get(k) for k in ("epoch", "is_best", "trial_done")}
            )
            self.best.update(trial, result.get(t.metric), epoch)
            if time.time() - self.last_beat >= HEARTBEAT_S:
                self.last_beat = time.time()
                running = [tr for tr in trials if tr.status == "RUNNING"]
                overall = self.best.overall()
                log.info(
                    "sweep: %d/%d trials done, %d running (%s), best %s so far %s",
                    self.n_done,
                    self.n_trials,
                    len(running),
                    ", ".join(
                        f"epoch {self.epochs.get(tr, 0)}/{cfg.train.epochs}" for tr in running
                    ),
                    t.metric,
                    "-" if overall is None else f"{overall:.4f}",
                )

        def _ended(self, trial, outcome: str) -> None:
            self.n_done += 1
            best = self.best.per_trial.get(trial)
            overall = self.best.overall()
            log.info(
                "trial %d/%d %s after %d epochs: %s %s (best so far %s; %s)",
                self.n_done,
                self.n_trials,
                outcome,
                self.epochs.get(trial, 0),
                t.metric,
                "-" if best is None else f"{best[0]:.4f}",
                "-" if overall is None else f"{overall:.4f}",
                describe(trial.config, t.search_space),
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            done_itself = ended_naturally(
                self.history.pop(trial, []), trial_config(cfg.to_dict(), trial.config).train
            )
            self._ended(trial, "done" if done_itself else "stopped early (scheduler)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial, "FAILED")

    return TrialProgress()


def swept_params(space: dict) -> dict[str, str]:
    """Config key -> 'swept: <distribution> <values>' for every key the trials set."""
    out = {}
    for key, spec in space.items():
        kind, values = distribution(spec)
        for name in targets(key, spec):
            out[name] = f"swept ({key}): {kind} {json.dumps(values)}"
    return out


def _interrupted(exp_dir: str, t: SweepConfig) -> bool:
    """After Tuner.fit: did a SIGINT stop the sweep early? Tune then returns normally; its saved
    state holds the unfinished trials as PENDING (in memory they look TERMINATED), and trials the
    search has not generated yet are missing."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(exp_dir).trials
    return len(trials) < expected_trials(t) or any(
        tr.status not in ("TERMINATED", "ERROR") for tr in trials
    )


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _search_alg(t: SweepConfig):
    if t.search_alg != "optuna":
        return None
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError(
            "config key 'tune.search_alg': optuna is not installed (pip install optuna), "
            "or use tune.search_alg=random"
        )
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch()


def run_tune(cfg: ExperimentConfig, resume: bool = False, address: str | None = None) -> dict:
    """Run (or resume) the sweep; returns best config, best metric and the report's paths."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    check_required(cfg)
    if cfg.pretrain.epochs > 0:
        log.warning(
            "pretrain.epochs=%d: pre-training is a stage of `pipeline`; the sweep's teacher and "
            "trials start from scratch",
            cfg.pretrain.epochs,
        )
    original = cfg
    cfg = anchor_paths(cfg, os.getcwd())  # trials run with their CWD in the trial dir
    if not cfg.train.num_threads:  # one torch thread per CPU of a trial, never all cores
        cfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, num_threads=max(1, int(cfg.tune.cpus_per_trial))),
        )
    t = cfg.tune
    space = search_space(cfg)  # ConfigError before anything runs
    search_alg = _search_alg(t)
    out = ensure_writable_dir(cfg.output_dir)
    storage = t.storage.rstrip("/") if t.storage else str(out / "tune")
    exp_dir = f"{storage}/{t.name}"
    if resume and not tune.Tuner.can_restore(exp_dir):
        raise ValueError(f"--resume: no sweep to resume at {exp_dir}")
    if not resume and tune.Tuner.can_restore(exp_dir):
        raise ValueError(
            f"a sweep already exists at {exp_dir}: pass --resume to continue it, or choose "
            "another tune.name / output_dir"
        )
    tracker = Tracker(cfg)
    if tracker.enabled:
        check_reachable(tracker.uri)
    state_file = out / "sweep_state.json"
    previous = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
    attached = init_ray(cfg.ray, address) != "local"
    per_trial = _check_resources(cfg, attached, storage)
    t0 = time.time()
    with sweep_run(tracker, f"sweep:{t.name}", previous.get("parent_run_id")) as parent_id:
        write_json_atomic(state_file, {"parent_run_id": parent_id, "tracking_uri": tracker.uri})
        if not resume:
            # also the search space, as tune.search_space.<key>.<distribution>; the swept keys
            # say "swept", not the base value no trial used
            tracker.log_config(cfg, swept=swept_params(t.search_space))
            log_datasets(tracker, cfg, data_splits(cfg, pool=t.trial == "student"))
        train, val = load_train_val(cfg)
        data = {"train": ray.put(train), "val": ray.put(val), "pool": None}
        if t.trial == "student":
            pool = _teacher_and_pool(cfg, tracker, out, train)
            data["pool"] = ray.put(pool)
            log.info(
                "[3] sweep: %d rows in the pool; every trial re-thresholds the stored "
                "probabilities",
                len(pool["split"]),
            )
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=cfg.to_dict(), data=data), per_trial
        )
        # CSV + JSON loggers explicitly (Tune's results read them); no TensorBoard logger, whose
        # "tensorboard --logdir /tmp/ray/session_..." hint points into a temporary directory
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        callbacks = [CSVLoggerCallback(), JsonLoggerCallback(), _progress_callback(cfg)]
        if tracker.enabled:
            experiment_id = tracker.client.get_experiment_by_name(
                cfg.tracking.experiment
            ).experiment_id
            callbacks.append(TrialRuns(tracker.uri, experiment_id, parent_id, cfg))
        if resume:
            log.info("resuming the sweep at %s", exp_dir)
            tuner = tune.Tuner.restore(
                exp_dir, trainable, resume_unfinished=True, restart_errored=True
            )
        else:
            scheduler = (
                ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=cfg.train.epochs,
                    grace_period=t.grace_period,
                    reduction_factor=t.reduction_factor,
                )
                if t.scheduler == "asha"
                else None
            )
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=t.metric,
                    mode=t.mode,
                    num_samples=t.num_samples,
                    max_concurrent_trials=t.max_concurrent_trials or None,
                    scheduler=scheduler,
                    search_alg=search_alg,
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=t.name,
                    storage_path=storage,
                    verbose=0,
                    callbacks=callbacks,
                    # local trials attach a checkpoint to each new best epoch: keep only that one
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=1,
                        checkpoint_score_attribute=t.metric,
                        checkpoint_score_order=t.mode,
                    ),
                ),
            )
        results = tuner.fit()
        if _interrupted(exp_dir, t):
            if tracker.enabled:
                end_interrupted_runs(tracker.client, experiment_id, parent_id)
            raise SweepInterrupted(
                f"sweep '{t.name}' was interrupted; its state is saved in {exp_dir}: continue "
                "with the same command and --resume"
            )
        report = write_report(cfg, original, results, tracker, parent_id, out)
    report["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out / "sweep.json", {k: v for k, v in report.items()})
    return report


# --------------------------------------------------------------------------------------------
# the report of a finished sweep: files from the inner ring's tables and plots, logged to MLflow


def best_model(result, cfg: ExperimentConfig, target: Path) -> Path | None:
    """The best trial's weights as a checkpoint directory (local trials: Tune's checkpoint; Ray
    Train trials: the best weights inside Train's latest checkpoint)."""
    import torch

    if result.checkpoint is not None and cfg.scaling.num_workers == 0:
        with result.checkpoint.as_directory() as d, atomic_dir(target) as tmp:
            shutil.copytree(d, tmp, dirs_exist_ok=True)
        return target
    path = (result.metrics or {}).get("checkpoint_path")
    if not path:
        return None
    from ray.tune import Checkpoint

    with Checkpoint(path).as_directory() as d:  # a local dir or a URI (s3://...)
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    return checkpoint.save(
        target, saved["best_state"], cfg, {"epoch": saved["best_epoch"] + 1, "val": saved["best"]}
    )


def write_report(
    cfg: ExperimentConfig,
    original: ExperimentConfig,
    results,
    tracker,
    parent_id: str | None,
    out: Path,
) -> dict:
    """trials.csv, plots, best.yaml, the best model (logged and maybe registered); returns the
    summary.

    `cfg` is the config the trials ran with (absolute paths), `original` the one the user gave (for
    best.yaml), `results` Tune's ResultGrid, `tracker` the sweep's Tracker."""
    t = cfg.tune
    runs: dict[str, str] = {}
    if tracker.enabled:
        experiment = tracker.client.get_experiment_by_name(cfg.tracking.experiment)
        for run in tracker.client.search_runs(
            [experiment.experiment_id], f"tags.sweep_parent = '{parent_id}'"
        ):
            runs.setdefault(run.data.tags.get("trial_id", ""), run.info.run_id)
    rows = trial_rows(results, cfg, runs)
    if not rows or all(r["error"] for r in rows):
        first = next((r["_result"].error for r in rows if r["_result"].error), None)
        raise RuntimeError(
            f"every trial of sweep '{t.name}' failed; first error: {first}"
        ) from first
    metric_col = f"best_{t.metric}"
    csv_path = write_trials_csv(
        [{k: v for k, v in r.items() if k not in ("params", "_result")} for r in rows],
        out / "trials.csv",
    )
    plots = plot_sweep(rows, t.search_space, metric_col, out / "plots")
    best = pick_best(rows, metric_col, t.mode)
    judged = verdict(rows, best, metric_col, t.mode, t.search_space)
    for warning in judged["warnings"]:
        log.warning("sweep '%s': %s", t.name, warning)
    best_yaml = write_best_yaml(
        original,
        {
            k: json.dumps(v) if is_encoded(t.search_space[k]) else v
            for k, v in best["params"].items()
        },
        out / "best.yaml",
    )
    try:
        model_dir = best_model(
            best["_result"], trial_config(cfg.to_dict(), best["_result"].config), out / "best_model"
        )
    except (
        OSError,
        KeyError,
        RuntimeError,
    ) as exc:  # e.g. a checkpoint on another node's local disk
        log.warning(
            "could not fetch the best trial's model (%s); set tune.storage to storage every node "
            "shares (s3://... or a shared mount)",
            exc,
        )
        model_dir = None
    registered = None
    if tracker.enabled:
        tracker.log_artifact(csv_path)
        tracker.log_artifact(best_yaml)
        for p in plots:
            tracker.log_artifact(p, "plots")
        tracker.log_metrics(
            {
                metric_col: best[metric_col],
                "n_trials": len(rows),
                "n_stopped_early": sum(bool(r["stopped_early"]) for r in rows),
            }
        )
        tracker.client.set_tag(parent_id, "best_trial_id", best["trial_id"])
        if model_dir is not None and best["mlflow_run_id"]:
            info = tracker.log_model(model_dir, run_id=best["mlflow_run_id"])
            tracker.client.set_tag(best["mlflow_run_id"], "best_trial", "true")
            if cfg.tracking.register_model:
                registered = register_model(
                    tracker.client,
                    cfg.tracking.register_model,
                    best["mlflow_run_id"],
                    info.model_id,
                    cfg.tracking.model_alias,
                )
    best_params = expand_params(best["params"], t.search_space)
    swept = ", ".join(f"{k}={v}" for k, v in best_params.items())
    if tracker.enabled:
        margin = judged["margin"]
        describe_run(
            tracker,
            f"Sweep '{t.name}' of {len(rows)} {t.trial} trials over "
            f"{', '.join(t.search_space)} on {Path(cfg.data.root).resolve()} "
            f"({t.scheduler}, {t.search_alg}): best {metric_col} {best[metric_col]:.4f} with "
            f"{swept} (trial {best['trial_id']}"
            + (f", {margin:+.4f} over the runner-up" if margin is not None else "")
            + f"). {' '.join(judged['warnings'])} Best config: {best_yaml}"
            + (f"; model {registered['uri']}." if registered else "."),
        )
    log.info(
        "best trial %s: %s %.4f (%s) -> %s",
        best["trial_id"],
        metric_col,
        best[metric_col],
        swept,
        best_yaml,
    )
    return {
        "best_trial_id": best["trial_id"],
        "best_params": best_params,
        "metric": metric_col,
        "best_metric": best[metric_col],
        "margin_over_runner_up": judged["margin"],
        "runner_up_trial_id": judged["runner_up"],
        "warnings": judged["warnings"],
        "best_config": str(best_yaml),
        "best_model": str(model_dir) if model_dir else None,
        "trials_csv": str(csv_path),
        "plots": [str(p) for p in plots],
        "n_trials": len(rows),
        "n_stopped_early": sum(bool(r["stopped_early"]) for r in rows),
        "n_errors": sum(bool(r["error"]) for r in rows),
        "experiment_dir": f"{t.storage.rstrip('/') if t.storage else out / 'tune'}/{t.name}",
        "mlflow": {
            "tracking_uri": tracker.uri,
            "experiment": cfg.tracking.experiment,
            "experiment_id": experiment.experiment_id if tracker.enabled else None,
            "parent_run_id": parent_id,
            "best_run_id": best["mlflow_run_id"] or None,
            "registered_model": registered,
        },
    }
