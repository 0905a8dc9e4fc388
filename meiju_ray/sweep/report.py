"""Report tables and plots of a finished sweep: plain functions of rows (no Ray, no MLflow).

    trial_rows(results, cfg, runs)   one row per trial from Tune's results (duck-typed)
    write_trials_csv / plot_sweep / pick_best / verdict / write_best_yaml

`meiju_ray.distributed.tune.write_report` calls them and logs the files to the sweep's MLflow run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from meiju_ray.config import ExperimentConfig, SweepConfig, to_yaml
from meiju_ray.fileio import atomic_file, write_text_atomic
from meiju_ray.sweep.grammar import as_number, distribution, is_encoded, targets
from meiju_ray.sweep.space import (
    ended_naturally,
    expand_params,
    is_nan,
    trial_config,
)

log = logging.getLogger("meiju_ray")


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_trials_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One row per trial; columns in first-seen order."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def pick_best(rows: list[dict[str, Any]], metric_column: str, mode: str) -> dict[str, Any] | None:
    """The best trial that ran to its own end (the scheduler judged the stopped ones worse); if none
    did, the best of all trials without an error."""
    ok = [
        r
        for r in rows
        if not r.get("error") and r.get(metric_column) is not None and not is_nan(r[metric_column])
    ]
    finished = [r for r in ok if not r.get("stopped_early")] or ok
    if not finished:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(finished, key=lambda r: sign * float(r[metric_column]))


class RunningBest:
    """The best value of a metric so far, per trial and over all trials (`mode`: max or min);
    non-numbers and NaN are ignored."""

    def __init__(self, mode: str):
        self.sign = 1.0 if mode == "max" else -1.0
        self.per_trial: dict[Any, tuple[float, int]] = {}  # trial -> (best value, its epoch)

    def update(self, trial: Any, value: Any, epoch: int) -> tuple[float, int] | None:
        best = self.per_trial.get(trial)
        if as_number(value) is not None and not is_nan(float(value)):
            if best is None or self.sign * float(value) > self.sign * best[0]:
                self.per_trial[trial] = best = (float(value), epoch)
        return best

    def overall(self) -> float | None:
        values = [v for v, _ in self.per_trial.values()]
        return max(values, key=lambda v: self.sign * v) if values else None


# joint-score differences below this are within the seed noise measured on these data sizes
# (0.003-0.01 joint between seeds of one config; RESULTS.md)
SEED_NOISE = 0.01
PSEUDO_PREFIX = "pseudo."


def verdict(
    rows: list[dict[str, Any]],
    best: dict[str, Any],
    metric_column: str,
    mode: str,
    space: dict[str, dict[str, list]],
    noise: float = SEED_NOISE,
) -> dict[str, Any]:
    """How much the best trial's win means: its margin over the runner-up, whether that margin is a
    tie or within the seed noise (one seed per trial cannot tell such trials apart), and warnings
    for swept pseudo-label settings that changed nothing (no trial got a pseudo-label, or every
    value gave the same count)."""
    sign = 1.0 if mode == "max" else -1.0
    ok = [
        r
        for r in rows
        if not r.get("error") and r.get(metric_column) is not None and not is_nan(r[metric_column])
    ]
    others = sorted((r for r in ok if r is not best), key=lambda r: -sign * float(r[metric_column]))
    warnings: list[str] = []
    out: dict[str, Any] = {"margin": None, "runner_up": None, "warnings": warnings}
    if others:
        runner = others[0]
        margin = sign * (float(best[metric_column]) - float(runner[metric_column]))
        out.update(margin=margin, runner_up=runner["trial_id"])
        if margin == 0.0:
            warnings.append(
                f"tie: trial {runner['trial_id']} has the same {metric_column} "
                f"({float(best[metric_column]):.4f}); the best was picked by order, not by merit"
            )
        elif margin < noise:
            near = [r for r in others if sign * (best[metric_column] - r[metric_column]) < noise]
            warnings.append(
                f"near-tie: {len(near)} other trial(s) within {noise:g} {metric_column} of the "
                f"best (margin {margin:.4f} over {runner['trial_id']}), inside the seed "
                "noise; re-run the top trials over several seeds before trusting the ranking"
            )
    pseudo_keys = [
        k for k in space if any(n.startswith(PSEUDO_PREFIX) for n in targets(k, space[k]))
    ]
    counts = [r.get("n_pseudo") for r in ok if r.get("n_pseudo") is not None]
    if pseudo_keys and counts:
        if max(counts) == 0:
            warnings.append(
                f"no trial got a pseudo-label: the swept {', '.join(pseudo_keys)} changed "
                "nothing (every trial trained on the labelled rows only)"
            )
        else:
            for key in pseudo_keys:
                by_value: dict[str, set] = {}
                for r in ok:
                    by_value.setdefault(json.dumps(r["params"].get(key)), set()).add(r["n_pseudo"])
                if len(by_value) > 1 and len(set().union(*by_value.values())) == 1:
                    warnings.append(
                        f"every value of {key} gave the same {counts[0]} pseudo-labels: sweeping "
                        "it changed nothing"
                    )
    return out


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return str(value)


def plot_sweep(
    rows: list[dict[str, Any]],
    space: dict[str, dict[str, list]],
    metric_column: str,
    out_dir: str | os.PathLike,
) -> list[Path]:
    """One PNG per swept key: the trials' metric against the swept value (stopped trials hollow)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend switch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, spec in space.items():
        kind, _ = distribution(spec)
        names = targets(key, spec)
        points = [
            (r["params"].get(key), r.get(metric_column), bool(r.get("stopped_early")))
            for r in rows
            if r.get(metric_column) is not None and not is_nan(r[metric_column])
        ]
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
            ax.scatter(
                [x], [y], s=50, facecolors="none" if stopped else "tab:blue", edgecolors="tab:blue"
            )
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
# the report of a finished sweep (reads Tune's results; writes files; logs to the sweep's MLflow
# run)


def trial_rows(results, cfg: ExperimentConfig, runs: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial: swept values, final/best metric, epochs, stopped early."""
    t, base = cfg.tune, cfg.to_dict()
    sign = 1.0 if t.mode == "max" else -1.0
    rows = []
    for result in results:
        params = dict(result.config or {})
        history = (
            result.metrics_dataframe.to_dict("records")
            if result.metrics_dataframe is not None
            else []
        )
        values = [h[t.metric] for h in history if as_number(h.get(t.metric)) is not None]
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.replace(
            "trial_", ""
        )
        row: dict[str, Any] = {
            "trial_id": trial_id,
            **expand_params(params, t.search_space),
            f"best_{t.metric}": max(values, key=lambda v: sign * v) if values else None,
            f"final_{t.metric}": values[-1] if values else None,
            "iterations": len(history),
            "stopped_early": bool(history)
            and not result.error
            and not ended_naturally(history, trial_config(base, params).train),
            "n_pseudo": history[-1].get("n_pseudo") if history else None,
            "error": str(result.error).splitlines()[0][:200] if result.error else "",
            "mlflow_run_id": runs.get(trial_id, ""),
        }
        row["params"] = {
            k: json.loads(v) if is_encoded(t.search_space[k]) and isinstance(v, str) else v
            for k, v in params.items()
            if k in t.search_space
        }
        row["_result"] = result
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def write_best_yaml(cfg: ExperimentConfig, best_params: dict, path: Path) -> Path:
    """The base config (paths as the user gave them) with the best values and no sweep section,
    ready for `meiju-ray pipeline|train best.yaml`. It trains into <output_dir>_best, a sibling, so
    its default MLflow store is the sweep's own (tracking.default_uri: the output dir's parent)."""
    best = trial_config(cfg.to_dict(), best_params)
    best = dataclasses.replace(
        best, output_dir=f"{cfg.output_dir.rstrip('/')}_best", tune=SweepConfig()
    )
    command = "pipeline" if cfg.tune.trial == "student" else "train"
    swept = ", ".join(
        f"{k}={v}" for k, v in expand_params(best_params, cfg.tune.search_space).items()
    )
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    header = (
        f"# Best trial of sweep '{cfg.tune.name}' ({swept}).\n#   meiju-ray {command} {shown}\n"
    )
    return write_text_atomic(path, header + to_yaml(best))
