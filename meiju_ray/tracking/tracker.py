"""MLflow tracking: one parent run per pipeline, nested child runs per stage.

mlflow is imported inside functions, never at module import (its import is slow, and it is an
outer ring).
MLflow 3.x notes (docs: ray-mlflow-notes §4, §6): the file store (`file:`/`./mlruns`) raises unless
MLFLOW_ALLOW_FILE_STORE is set, so only `sqlite:` or a server URL is accepted; sqlite URIs are made
absolute (a relative one lands in Ray's temp working dir inside jobs), and new experiments get an
absolute artifact location `<db dir>/mlartifacts` for the same reason.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from meiju_ray.config import ConfigError, ExperimentConfig, flatten, to_yaml
from meiju_ray.tracking.provenance import source_tags

SQLITE = "sqlite:///"
MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH


class TrackingError(RuntimeError):
    """The tracking backend is unusable (server down, store not writable, no active run)."""


def default_uri(output_dir: str) -> str:
    """One sqlite store per output root: runs/demo -> sqlite:////abs/runs/mlflow.db."""
    if not str(output_dir).strip():
        raise ConfigError("config key 'output_dir' must be set to derive the default tracking URI")
    return SQLITE + str(Path(os.path.abspath(output_dir)).parent / "mlflow.db")


def resolve_uri(cfg: ExperimentConfig) -> str:
    """cfg.tracking.uri (relative sqlite paths made absolute against the CWD) or default_uri."""
    uri = cfg.tracking.uri.strip()
    if not uri:
        return default_uri(cfg.output_dir)
    if uri.startswith(SQLITE):
        path = uri[len(SQLITE) :]
        return uri if os.path.isabs(path) else SQLITE + os.path.abspath(path)
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if uri.startswith("file:") or len(scheme) <= 1:  # no scheme, or a Windows drive letter
        raise ConfigError(
            f"config key 'tracking.uri': {uri!r} is a file-store URI; the file store is deprecated "
            "in MLflow 3.x (it raises unless MLFLOW_ALLOW_FILE_STORE=true). Use an absolute "
            "'sqlite:////abs/path/mlflow.db', an http(s):// server, or leave it empty for the "
            "default"
        )
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len(SQLITE) :].split("?", 1)[0]) if uri.startswith(SQLITE) else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training: an http(s) server answers, or the sqlite directory is
    writable."""
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"MLflow sqlite store {uri}: cannot create {db.parent}: {exc}"
            ) from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(
                f"MLflow sqlite store {uri}: {db if db.exists() else db.parent} is not writable"
            )
        return
    if not uri.startswith(("http://", "https://")):
        return  # databricks, postgresql, ...: nothing cheap to probe
    base, deadline, problem = uri.rstrip("/"), time.monotonic() + timeout, "no answer"
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with urllib.request.urlopen(
                urllib.request.Request(base + path, headers=headers), timeout=left
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                problem = f"GET {path} returned HTTP {resp.status}"
        except (
            urllib.error.HTTPError
        ) as exc:  # the server is there but unhappy: try the next endpoint
            problem = f"GET {path} returned HTTP {exc.code} {exc.reason}"
        except (
            urllib.error.URLError,
            OSError,
        ) as exc:  # refused, DNS, timeout: no point in a second try
            raise TrackingError(
                f"MLflow tracking server at {uri} is not reachable: {getattr(exc, 'reason', exc)}"
            ) from None
    raise TrackingError(f"MLflow tracking server at {uri} is not reachable: {problem}")


def _number(value: Any) -> float | None:
    """A finite float, or None for NaN/inf, bools and anything non-numeric."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


class Tracker:
    """Thin MLflow wrapper, used on the driver. Disabled (cfg.tracking.enabled False) -> every
    method is a no-op.

    Nothing touches the store until `run()` is entered. Logging methods write to the innermost run
    opened by this tracker (or MLflow's active run) and raise TrackingError when there is none.
    """

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.enabled = bool(cfg.tracking.enabled)
        self.uri = resolve_uri(cfg) if self.enabled else None
        self._runs: list[str] = []
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def run_id(self) -> str | None:
        if not self.enabled or self._runs:
            return self._runs[-1] if self._runs else None
        import mlflow

        active = mlflow.active_run()
        return active.info.run_id if active else None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name, client = self.cfg.tracking.experiment, self.client
        exp = client.get_experiment_by_name(name)
        if exp is None:
            db = _sqlite_path(self.uri)
            location = str(db.parent / "mlartifacts") if db is not None else None
            try:
                return client.create_experiment(name, artifact_location=location)
            except MlflowException:  # another process created it first
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} in {self.uri} is deleted: restore it or rename"
            )
        return exp.experiment_id

    @contextmanager
    def run(
        self, name: str, nested: bool = False, tags: dict | None = None
    ) -> Iterator[str | None]:
        """Start a run (a child of the active run if `nested`); FINISHED on exit, FAILED/KILLED on
        an exception."""
        if not self.enabled:
            yield None
            return
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        active = mlflow.start_run(
            experiment_id=self._experiment_id(),
            run_name=name or self.cfg.tracking.run_name or None,
            nested=nested,
            # the code's git commit (when it runs from a checkout), then the caller's tags
            tags=source_tags() | {k: str(v) for k, v in (tags or {}).items()},
        )
        run_id = active.info.run_id
        self._runs.append(run_id)
        try:
            yield run_id
        except BaseException as exc:
            try:
                self._end(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            except Exception:  # never mask the original error
                pass
            raise
        else:
            self._end(run_id, "FINISHED")

    def _end(self, run_id: str, status: str) -> None:
        import mlflow

        if run_id in self._runs:
            self._runs.remove(run_id)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)
        else:  # someone else's run is on top of the stack
            self.client.set_terminated(run_id, status)

    def _target(self) -> str:
        run_id = self.run_id
        if run_id is None:
            raise TrackingError("no active MLflow run: log inside `with tracker.run(...)`")
        return run_id

    def log_config(self, cfg: ExperimentConfig | dict, swept: dict[str, str] | None = None) -> None:
        """Every config key as a string param (a.b.c; list items of dicts as a.0.c) +
        config.yaml. `swept` (a sweep's parent run): key -> what the trials sweep, logged instead
        of the base value that no trial used."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        run_id, tree = self._target(), cfg if isinstance(cfg, dict) else cfg.to_dict()
        values = {**flatten(tree), **(swept or {})}
        params = [Param(k[:250], str(v)[:MAX_PARAM_LEN]) for k, v in values.items()]
        self.client.log_batch(run_id, params=params)  # MlflowClient splits it into batches
        text = yaml.safe_dump(tree, sort_keys=False) if isinstance(cfg, dict) else to_yaml(cfg)
        self.client.log_text(run_id, text, "config.yaml")

    def log_metrics(self, metrics: dict, step: int | None = None, prefix: str = "") -> None:
        """Finite numbers only (NaN/inf and non-numeric values are skipped); `prefix` is prepended
        verbatim."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        run_id, now = self._target(), int(time.time() * 1000)
        rows = [
            Metric(f"{prefix}{k}", x, now, int(step or 0))
            for k, v in metrics.items()
            if (x := _number(v)) is not None
        ]
        self.client.log_batch(run_id, metrics=rows)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """One epoch's metrics. The step convention everywhere (stage runs and Tune's trial runs):
        step = the epoch number as the console prints it, 1 for the first epoch; `epoch` itself is
        logged the same way (the training loop counts from 0)."""
        self.log_metrics({**metrics, "epoch": epoch + 1}, step=epoch + 1)

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        """JSON, or YAML when artifact_file ends in .yaml/.yml; numpy/torch values become plain
        numbers."""
        if not self.enabled:
            return
        plain = json.loads(
            json.dumps(obj, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
        )
        text = (
            yaml.safe_dump(plain, sort_keys=False)
            if artifact_file.endswith((".yaml", ".yml"))
            else json.dumps(plain, indent=2)
        )
        self.client.log_text(self._target(), text, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under `artifact_path`."""
        if not self.enabled:
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log does not exist: {path}")
        log = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        log(self._target(), str(path), artifact_path)

    def log_confusion(self, matrix, labels: list[str], title: str, artifact_file: str) -> None:
        """A PNG heatmap (rows = true, columns = predicted) with the value in every cell."""
        if not self.enabled:
            return
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend switch

        m = np.asarray(matrix)
        if m.shape != (len(labels), len(labels)):
            raise ValueError(
                f"confusion matrix shape {m.shape} does not match {len(labels)} labels"
            )
        size = 1.2 + 0.55 * len(labels)
        fig = Figure(figsize=(size + 1.5, size), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        image = ax.imshow(m, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set(yticks=ticks, yticklabels=labels, xlabel="predicted", ylabel="true", title=title)
        top, integral = (float(m.max()) if m.size else 0.0), np.issubdtype(m.dtype, np.integer)
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                f"{v:d}" if integral else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if top and v > top / 2 else "black",
            )
        fig.tight_layout()
        self.client.log_figure(self._target(), fig, artifact_file)

    def log_model(
        self, checkpoint_dir: str | os.PathLike, artifact_path: str = "model", run_id: str = ""
    ):
        """The checkpoint directory (a single model or an ensemble) as a pyfunc MLflow model of
        the current run (or `run_id`) named `artifact_path`: runs:/<run_id>/model
        (tracking.models). Returns MLflow's ModelInfo, or None when tracking is off."""
        if not self.enabled:
            return None
        import mlflow

        from meiju_ray.tracking.models import log_checkpoint_model

        mlflow.set_tracking_uri(self.uri)  # MLflow's Model.log writes to the global store
        return log_checkpoint_model(checkpoint_dir, run_id or self._target(), artifact_path)


def end_interrupted_runs(client, experiment_id: str, parent_run_id: str) -> list[str]:
    """Runs nested under `parent_run_id` (a pipeline's stage runs, a sweep's trial runs, and
    theirs) that are still RUNNING although the process that ran them is gone end as KILLED;
    returns their ids."""
    ended = []
    for run in client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    ):
        client.set_terminated(run.info.run_id, "KILLED")
        ended += [run.info.run_id, *end_interrupted_runs(client, experiment_id, run.info.run_id)]
    return ended


def end_killed_run(client, run_id: str) -> list[str]:
    """A run whose process was killed (SIGKILL, OOM, a lost node) before it could end it: it and
    its RUNNING nested runs end as KILLED. Returns the ids ended (none when it had ended)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:  # deleted, or another store
        return []
    ended = end_interrupted_runs(client, run.info.experiment_id, run_id)
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
        ended.insert(0, run_id)
    return ended


def download_model(model_uri: str, dst: str | os.PathLike, tracking_uri: str | None = None) -> str:
    """runs:/<run_id>/model or models:/... (or a local directory) -> a directory checkpoint.load()
    reads (the checkpoint inside the MLflow model).

    tracking_uri defaults to MLflow's current one (set by a Tracker in this process, or
    $MLFLOW_TRACKING_URI)."""
    from meiju_ray.tracking.models import resolve_checkpoint

    return str(resolve_checkpoint(model_uri, tracking_uri, dst))


def summary_metrics(info: dict) -> dict[str, float]:
    """A pseudo-label summary as MLflow metrics: its numbers, and per class the counts and the
    precision against withheld labels (emotion_counts.happy, emotion_precision.happy, ...)."""
    out: dict[str, float] = {}
    for key, value in info.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, dict):
            for label, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}.{label}"] = v
    return out
