"""MLflow for sweeps: the sweep's parent run, one child run per Tune trial, the model registry.

The trial runs are written by Ray's MLflowLoggerCallback on the driver (not inside the trials), so a
trial that ASHA stops or a SIGINT interrupts never leaves a run RUNNING: it ends FINISHED (tagged
stopped_early=true/false), FAILED, or KILLED (interrupted; a resumed sweep starts a new run for it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from meiju_ray.config import ExperimentConfig
from meiju_ray.sweep.report import RunningBest
from meiju_ray.sweep.space import (
    describe,
    ended_naturally,
    expand_params,
    trial_config,
)
from meiju_ray.tracking.provenance import source_tags
from meiju_ray.tracking.tracker import end_interrupted_runs

log = logging.getLogger("meiju_ray")


class TrialRuns(MLflowLoggerCallback):
    """Ray's MLflow logger callback (on the driver), with the sweep's conventions: each trial run is
    a child of the sweep's parent run, its params are the swept config keys (keys swept together
    split up), and at its end it is tagged stopped_early=true/false (did a scheduler stop it?)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, cfg: ExperimentConfig):
        super().__init__(
            tracking_uri=uri,
            experiment_name=cfg.tracking.experiment,
            save_artifact=False,
            tags={
                **source_tags(),  # the code's git commit, as on every run the Tracker opens
                "mlflow.parentRunId": parent_run_id,
                "sweep_parent": parent_run_id,
                "stage": "trial",
            },
        )
        self.experiment_id, self.parent = experiment_id, parent_run_id
        self.base, self.space = cfg.to_dict(), cfg.tune.search_space
        self.metric, self.best = cfg.tune.metric, RunningBest(cfg.tune.mode)
        self._history: dict = {}

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        end_interrupted_runs(
            MlflowClient(self.tracking_uri), self.experiment_id, self.parent
        )  # resuming

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            swept = describe(trial.config, self.space)
            run = self.mlflow_util.start_run(
                # the swept values first: MLflow's run list truncates long names
                run_name=f"{swept} [{trial.trial_id.rsplit('_', 1)[-1]}]",
                tags={**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id},
            )
            self._trial_runs[trial] = run.info.run_id
            self._history[trial] = []
            self.mlflow_util.log_params(
                run_id=run.info.run_id, params_to_log=expand_params(trial.config, self.space)
            )

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        self._history[trial].append({k: result.get(k) for k in ("epoch", "is_best")})
        shown = dict(result)
        if isinstance(result.get("epoch"), (int, float)):
            shown["epoch"] = int(result["epoch"]) + 1  # the step convention: first epoch = 1
        best = self.best.update(trial, result.get(self.metric), shown.get("epoch", iteration))
        if best is not None:  # sorting trial runs by best_<metric> in MLflow ranks them right
            shown[f"best_{self.metric}"], shown["best_epoch"] = best
        super().log_trial_result(iteration, trial, shown)

    def log_trial_end(self, trial, failed=False):
        if trial not in self._trial_runs:
            return
        history = self._history.pop(trial, [])
        early = not failed and not ended_naturally(
            history, trial_config(self.base, trial.config).train
        )
        MlflowClient(self.tracking_uri).set_tag(
            self._trial_runs[trial], "stopped_early", str(early).lower()
        )
        super().log_trial_end(trial, failed)
        del self._trial_runs[trial]


@contextmanager
def sweep_run(tracker, name: str, run_id: str | None) -> Iterator[str | None]:
    """The parent run: a new one, or (resuming) the interrupted sweep's own run reopened."""
    if not tracker.enabled:
        yield None
        return
    if run_id is None:
        with tracker.run(name, tags={"stage": "sweep"}) as new_id:
            yield new_id
        return
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    mlflow.start_run(run_id=run_id)
    try:
        yield run_id
    except BaseException as exc:
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def register_model(client, name: str, run_id: str, model_id: str, alias: str = "") -> dict:
    """Register the best trial's logged model as a new version of `name` (created if needed),
    with `alias` moved to it (tracking.models.register)."""
    from meiju_ray.tracking.models import register

    return register(client, name, model_id, run_id, alias)
