"""MLflow for sweeps: the sweep's parent run, one child run per Tune trial, the model registry.

The trial runs are written by a Tune LoggerCallback on the driver (not inside the trials), so a trial
that ASHA stops or a SIGINT interrupts never leaves a run RUNNING: it ends FINISHED (tagged
stopped_early=true/false), FAILED, or KILLED (interrupted; a resumed sweep starts a new run for it).
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from meiju_ray.config import ExperimentConfig
from meiju_ray.sweep_report import ended_naturally, expand_params, trial_config

log = logging.getLogger("meiju_ray")
SKIP_METRICS = {"timestamp", "pid", "epoch", "time_since_restore", "iterations_since_restore"}


def mlflow_callback(uri: str, experiment_id: str, parent_run_id: str, cfg: ExperimentConfig):
    """A Tune LoggerCallback on the driver: a child run per trial, FINISHED or FAILED at its end and
    tagged stopped_early. (A class built here because Tune's base class is imported only with Ray;
    Tune pickles it, with cloudpickle, into the experiment state for --resume.)"""
    from ray.tune.logger import LoggerCallback

    class _Callback(LoggerCallback):
        def __init__(self):
            self.uri, self.experiment_id, self.parent = uri, experiment_id, parent_run_id
            self.base, self.space = cfg.to_dict(), cfg.tune.search_space
            self._client, self._runs, self._history = None, {}, {}

        def __getstate__(self):        # Tune pickles callbacks into its experiment state
            return {**self.__dict__, "_client": None, "_runs": {}, "_history": {}}

        @property
        def client(self):
            if self._client is None:
                from mlflow import MlflowClient
                self._client = MlflowClient(self.uri)
            return self._client

        def setup(self, *args, **kwargs):
            end_interrupted_runs(self.client, self.experiment_id, self.parent)   # resuming: they restart

        def log_trial_start(self, trial):
            from mlflow.entities import Param
            if trial in self._runs:
                return
            tags = {"mlflow.parentRunId": self.parent, "sweep_parent": self.parent, "trial_id": trial.trial_id,
                    "trial_name": str(trial), "stage": "trial"}
            run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
            self._runs[trial], self._history[trial] = run.info.run_id, []
            params = expand_params(trial.config, self.space)
            self.client.log_batch(run.info.run_id, params=[Param(k, json.dumps(v) if isinstance(v, (list, dict))
                                                                 else str(v)) for k, v in params.items()])

        def log_trial_result(self, iteration, trial, result):
            from mlflow.entities import Metric
            if trial not in self._runs:
                self.log_trial_start(trial)
            self._history[trial].append({k: result.get(k) for k in ("epoch", "is_best", "trial_done")})
            step, now = int(result.get("training_iteration", iteration)), int(time.time() * 1000)
            rows = [Metric(k, float(v), now, step) for k, v in result.items()
                    if k not in SKIP_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and np.isfinite(v)]
            self.client.log_batch(self._runs[trial], metrics=rows)

        def log_trial_end(self, trial, failed=False):
            if trial not in self._runs:
                return
            run_id = self._runs.pop(trial)
            history = self._history.pop(trial, [])
            train = trial_config(self.base, trial.config).train
            early = not failed and not ended_naturally(history, train)
            self.client.set_tag(run_id, "stopped_early", str(early).lower())
            self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
            log.info("trial %s %s after %d epochs: %s", trial.trial_id,
                     "FAILED" if failed else ("stopped early" if early else "finished"), len(history),
                     ", ".join(f"{k}={v}" for k, v in expand_params(trial.config, self.space).items()))

    return _Callback()


def end_interrupted_runs(client, experiment_id: str, parent_run_id: str) -> None:
    """Trial runs of a sweep that are still RUNNING (their trials were interrupted) end as KILLED."""
    for run in client.search_runs([experiment_id], f"tags.sweep_parent = '{parent_run_id}' "
                                  "and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


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


def register_model(client, name: str, run_id: str) -> dict:
    """Register runs:/<run_id>/model as a new version of `name` (created if needed)."""
    from mlflow.exceptions import MlflowException
    try:
        client.create_registered_model(name)
    except MlflowException:               # already there
        pass
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    log.info("registered the best model as %s version %s", name, version.version)
    return {"name": name, "version": int(version.version), "uri": f"models:/{name}/{version.version}"}
