"""Sweep bookkeeping: search-space values <-> configs, and the report of a finished sweep.

`meiju_ray.tune` runs the sweep; this module holds plain functions of dicts (no Ray import):

    trial_config(base, params)   the sampled values applied to the base config (type-checked)
    expand_params(params, space) {"head_split": "[4, 2]"} -> {"model.heads_emo_to_int": 4, ...}
    ended_naturally(...)         did a trial run to its own end, or did the scheduler stop it?
    write_trials_csv / plot_sweep / pick_best

and `write_report`, which turns Tune's results into <output_dir>/trials.csv, plots/*.png, best.yaml
and best_model/, and logs them to the sweep's MLflow run.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from meiju_ray import checkpoint
from meiju_ray.config import ConfigError, ExperimentConfig, TrainConfig, TuneConfig, as_number, set_dotted, to_yaml
from meiju_ray.fileio import write_text_atomic

log = logging.getLogger("meiju_ray")

# keys a trial cannot change: fixed by the teacher / pseudo-label pass, the cluster or the sweep itself
FIXED_PREFIXES = ("tune.", "ray.", "tracking.", "data.", "scaling.", "output_dir")
FIXED_KEYS = ("pseudo.calibrate", "pseudo.rounds", "pseudo.max_rows", "pseudo.actors", "pseudo.cpus_per_actor",
              "pseudo.gpus_per_actor", "pseudo.batch_size")


def targets(key: str, spec: dict[str, list]) -> list[str]:
    """The config keys one search-space entry sets: [key], or its `keys` list."""
    return list(spec.get("keys", [key]))


def distribution(spec: dict[str, list]) -> tuple[str, list]:
    """(kind, values) of a search-space entry, e.g. ("choice", [0.5, 0.9])."""
    (kind, values), = ((k, v) for k, v in spec.items() if k != "keys")
    return kind, values


def is_encoded(spec: dict[str, list]) -> bool:
    """choice/grid values that are lists or dicts travel through Tune as JSON strings (Optuna and
    MLflow only take scalars)."""
    kind, values = distribution(spec)
    return kind in ("choice", "grid") and any(isinstance(v, (list, dict)) for v in values)


def decode(key: str, value: Any, space: dict[str, dict[str, list]]) -> Any:
    spec = space.get(key)
    return json.loads(value) if spec is not None and is_encoded(spec) and isinstance(value, str) else value


def expand_params(params: dict[str, Any], space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Sampled values per real config key (keys swept together are split up)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        value = decode(key, value, space)
        names = targets(key, space[key]) if key in space else [key]
        if len(names) == 1:
            out[names[0]] = value
        else:
            out.update(zip(names, value))
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> ExperimentConfig:
    """The base config (a to_dict tree) with the sampled values set; type-checked and validated."""
    tree = json.loads(json.dumps(base))  # deep copy of plain data
    for key, value in expand_params(params, base["tune"]["search_space"]).items():
        set_dotted(tree, key, value)
    return ExperimentConfig.from_dict(tree)


def check_sweepable(key: str, spec: dict[str, list]) -> None:
    for name in targets(key, spec):
        if name.startswith(FIXED_PREFIXES) or name in FIXED_KEYS:
            raise ConfigError(f"config key 'tune.search_space.{key}': '{name}' cannot vary between trials "
                              "(it is fixed by the data, the cluster, the teacher's pseudo-label pass or the sweep)")


def is_last_epoch(epoch: int, best_epoch: int, train: TrainConfig) -> bool:
    """The engine's own stopping rule (engine.fit): all epochs done, or `patience` epochs without a new best."""
    return epoch + 1 >= train.epochs or bool(train.patience and epoch - best_epoch >= train.patience)


def ended_naturally(history: Sequence[dict], train: TrainConfig) -> bool:
    """From a trial's reported rows (each with epoch, is_best, maybe trial_done): did it finish on its own?"""
    if not history:
        return False
    last = history[-1]
    if "trial_done" in last and last["trial_done"] is not None and not _nan(last["trial_done"]):
        return bool(last["trial_done"])
    best = max((int(r["epoch"]) for r in history if r.get("is_best")), default=-1)
    return is_last_epoch(int(last.get("epoch", -1)), best, train)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_trials_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One row per trial; columns in first-seen order."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


def pick_best(rows: list[dict[str, Any]], metric_column: str, mode: str) -> dict[str, Any] | None:
    """The best trial that ran to its own end (the scheduler judged the stopped ones worse); if none
    did, the best of all trials without an error."""
    ok = [r for r in rows if not r.get("error") and r.get(metric_column) is not None
          and not _nan(r[metric_column])]
    finished = [r for r in ok if not r.get("stopped_early")] or ok
    if not finished:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(finished, key=lambda r: sign * float(r[metric_column]))


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return str(value)


def plot_sweep(rows: list[dict[str, Any]], space: dict[str, dict[str, list]], metric_column: str,
               out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per swept key: the trials' metric against the swept value (stopped trials hollow)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure   # Agg canvas, no pyplot: no global backend switch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, spec in space.items():
        kind, _ = distribution(spec)
        names = targets(key, spec)
        points = [(r["params"].get(key), r.get(metric_column), bool(r.get("stopped_early"))) for r in rows
                  if r.get(metric_column) is not None and not _nan(r[metric_column])]
        if not points:
            continue
        numeric = len(names) == 1 and all(as_number(x) is not None for x, _, _ in points)
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if numeric:
            xs = [float(as_number(x)) for x, _, _ in points]
            if kind == "loguniform":
                ax.set_xscale("log")
        else:
            categories = sorted({_label(x) for x, _, _ in points})
            xs = [categories.index(_label(x)) for x, _, _ in points]
            ax.set_xticks(range(len(categories)), categories)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        for x, (_, y, stopped) in zip(xs, points):
            ax.scatter([x], [y], s=50, facecolors="none" if stopped else "tab:blue", edgecolors="tab:blue")
        ax.scatter([], [], facecolors="tab:blue", edgecolors="tab:blue", label="ran to the end")
        ax.scatter([], [], facecolors="none", edgecolors="tab:blue", label="stopped early (ASHA)")
        ax.legend(loc="best", fontsize=8)
        xlabel = " / ".join(names) if len(names) == 1 else f"{key} ({' / '.join(names)})"
        ax.set(xlabel=xlabel, ylabel=metric_column, title=f"{metric_column} vs {key}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{metric_column}_vs_{re.sub(r'[^A-Za-z0-9_.-]+', '+', key)}.png"
        fig.savefig(path)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# the report of a finished sweep (reads Tune's results; writes files; logs to the sweep's MLflow run)


def trial_rows(results, cfg: ExperimentConfig, runs: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial: swept values, final/best metric, epochs, stopped early."""
    t, base = cfg.tune, cfg.to_dict()
    sign = 1.0 if t.mode == "max" else -1.0
    rows = []
    for result in results:
        params = dict(result.config or {})
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        values = [h[t.metric] for h in history if as_number(h.get(t.metric)) is not None]
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.replace("trial_", "")
        row: dict[str, Any] = {"trial_id": trial_id, **expand_params(params, t.search_space),
                               f"best_{t.metric}": max(values, key=lambda v: sign * v) if values else None,
                               f"final_{t.metric}": values[-1] if values else None,
                               "iterations": len(history),
                               "stopped_early": bool(history) and not result.error and not ended_naturally(
                                   history, trial_config(base, params).train),
                               "n_pseudo": history[-1].get("n_pseudo") if history else None,
                               "error": str(result.error).splitlines()[0][:200] if result.error else "",
                               "mlflow_run_id": runs.get(trial_id, "")}
        row["params"] = {k: json.loads(v) if is_encoded(t.search_space[k]) and isinstance(v, str) else v
                         for k, v in params.items() if k in t.search_space}
        row["_result"] = result
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def best_model(result, cfg: ExperimentConfig, target: Path) -> Path | None:
    """The best trial's weights as a checkpoint directory (local trials: Tune's checkpoint; Ray Train
    trials: the best weights inside Train's latest checkpoint)."""
    import torch

    if result.checkpoint is not None and cfg.scaling.num_workers == 0:
        with result.checkpoint.as_directory() as d:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(d, target)
        return target
    path = (result.metrics or {}).get("checkpoint_path")
    if not path:
        return None
    from ray.tune import Checkpoint

    from meiju_ray.ray_train import STATE_FILE
    with Checkpoint(path).as_directory() as d:    # a local dir or a URI (s3://...)
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    return checkpoint.save(target, saved["best_state"], cfg, {"epoch": saved["best_epoch"] + 1, "val": saved["best"]})


def write_best_yaml(cfg: ExperimentConfig, best_params: dict, path: Path) -> Path:
    """The base config (paths as the user gave them) with the best values and no sweep section,
    ready for `meiju-ray pipeline|train best.yaml`. It trains into <output_dir>_best, a sibling, so
    its default MLflow store is the sweep's own (tracking.default_uri: the output dir's parent)."""
    best = trial_config(cfg.to_dict(), best_params)
    best = dataclasses.replace(best, output_dir=f"{cfg.output_dir.rstrip('/')}_best", tune=TuneConfig())
    command = "pipeline" if cfg.tune.trial == "student" else "train"
    swept = ", ".join(f"{k}={v}" for k, v in expand_params(best_params, cfg.tune.search_space).items())
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    header = (f"# Best trial of sweep '{cfg.tune.name}' ({swept}).\n"
              f"#   meiju-ray {command} {shown}\n")
    return write_text_atomic(path, header + to_yaml(best))


def write_report(cfg: ExperimentConfig, original: ExperimentConfig, results, tracker, parent_id: str | None,
                 out: Path) -> dict:
    """trials.csv, plots, best.yaml, the best model (logged and maybe registered); returns the summary.

    `cfg` is the config the trials ran with (absolute paths), `original` the one the user gave (for
    best.yaml), `results` Tune's ResultGrid, `tracker` the sweep's Tracker."""
    t = cfg.tune
    runs: dict[str, str] = {}
    if tracker.enabled:
        experiment = tracker.client.get_experiment_by_name(cfg.tracking.experiment)
        for run in tracker.client.search_runs([experiment.experiment_id], f"tags.sweep_parent = '{parent_id}'"):
            runs.setdefault(run.data.tags.get("trial_id", ""), run.info.run_id)
    rows = trial_rows(results, cfg, runs)
    if not rows or all(r["error"] for r in rows):
        first = next((r["_result"].error for r in rows if r["_result"].error), None)
        raise RuntimeError(f"every trial of sweep '{t.name}' failed; first error: {first}") from first
    metric_col = f"best_{t.metric}"
    csv_path = write_trials_csv([{k: v for k, v in r.items() if k not in ("params", "_result")} for r in rows],
                                out / "trials.csv")
    plots = plot_sweep(rows, t.search_space, metric_col, out / "plots")
    best = pick_best(rows, metric_col, t.mode)
    best_yaml = write_best_yaml(original, {k: json.dumps(v) if is_encoded(t.search_space[k]) else v
                                            for k, v in best["params"].items()}, out / "best.yaml")
    try:
        model_dir = best_model(best["_result"], trial_config(cfg.to_dict(), best["_result"].config), out / "best_model")
    except (OSError, KeyError, RuntimeError) as exc:   # e.g. a checkpoint on another node's local disk
        log.warning("could not fetch the best trial's model (%s); set tune.storage to storage every node "
                    "shares (s3://... or a shared mount)", exc)
        model_dir = None
    registered = None
    if tracker.enabled:
        tracker.log_artifact(csv_path)
        tracker.log_artifact(best_yaml)
        for p in plots:
            tracker.log_artifact(p, "plots")
        tracker.log_metrics({metric_col: best[metric_col], "n_trials": len(rows),
                             "n_stopped_early": sum(bool(r["stopped_early"]) for r in rows)})
        tracker.client.set_tag(parent_id, "best_trial_id", best["trial_id"])
        if model_dir is not None and best["mlflow_run_id"]:
            tracker.client.log_artifacts(best["mlflow_run_id"], str(model_dir), "model")
            tracker.client.set_tag(best["mlflow_run_id"], "best_trial", "true")
            if cfg.tracking.register_model:
                from meiju_ray.sweep_tracking import register_model
                registered = register_model(tracker.client, cfg.tracking.register_model, best["mlflow_run_id"])
    best_params = expand_params(best["params"], t.search_space)
    swept = ", ".join(f"{k}={v}" for k, v in best_params.items())
    log.info("best trial %s: %s %.4f (%s) -> %s", best["trial_id"], metric_col, best[metric_col], swept, best_yaml)
    return {"best_trial_id": best["trial_id"], "best_params": best_params,
            "metric": metric_col, "best_metric": best[metric_col],
            "best_config": str(best_yaml), "best_model": str(model_dir) if model_dir else None,
            "trials_csv": str(csv_path), "plots": [str(p) for p in plots], "n_trials": len(rows),
            "n_stopped_early": sum(bool(r["stopped_early"]) for r in rows),
            "n_errors": sum(bool(r["error"]) for r in rows),
            "experiment_dir": f"{t.storage.rstrip('/') if t.storage else out / 'tune'}/{t.name}",
            "mlflow": {"tracking_uri": tracker.uri, "experiment": cfg.tracking.experiment,
                       "parent_run_id": parent_id, "best_run_id": best["mlflow_run_id"] or None,
                       "registered_model": registered}}
