"""meiju_ray.tracking.tracker against a real MLflow sqlite store (no server, no mocks).

Creating a fresh sqlite store runs MLflow's migrations (slow), so one store is shared by the
module and each test uses its own experiment.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.config import ConfigError, load_config
from meiju_ray.model.network import build_model
from meiju_ray.tracking.tracker import (
    Tracker,
    TrackingError,
    check_reachable,
    default_uri,
    download_model,
    resolve_uri,
)
from meiju_ray.train import checkpoint

pytestmark = pytest.mark.timeout(120)
SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


def make_cfg(out, *overrides):
    return load_config(SMOKE, ["data.root=x", f"output_dir={out}", *overrides])


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tracking") / "o"


@pytest.fixture(scope="module")
def client(out_dir):
    import mlflow
    from mlflow import MlflowClient

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield MlflowClient(resolve_uri(make_cfg(out_dir)))
    # Tracker sets MLflow's global URI (and $MLFLOW_TRACKING_URI); do not leak it into other modules
    mlflow.set_tracking_uri(before)


@pytest.fixture
def tracker(out_dir, client, request):
    """A tracker on the shared store, in an experiment named after the test."""
    import mlflow

    t = Tracker(make_cfg(out_dir, f"tracking.experiment={request.node.name}"))
    yield t
    assert mlflow.active_run() is None, "a run was left active"


def runs_of(client, tracker):
    exp = client.get_experiment_by_name(tracker.cfg.tracking.experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_nested_runs_and_failure(tracker, client, out_dir):
    with tracker.run("pipeline", tags={"kind": "pipeline"}) as parent:
        assert tracker.run_id == parent
        for stage in ("teacher", "student"):
            with tracker.run(stage, nested=True) as child:
                assert tracker.run_id == child != parent
        assert tracker.run_id == parent
    runs = runs_of(client, tracker)
    assert set(runs) == {"pipeline", "teacher", "student"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["pipeline"].data.tags["kind"] == "pipeline"
    assert "mlflow.parentRunId" not in runs["pipeline"].data.tags
    for stage in ("teacher", "student"):
        assert runs[stage].data.tags["mlflow.parentRunId"] == parent
    # artifacts land beside the db, never in the CWD
    exp = client.get_experiment_by_name(tracker.cfg.tracking.experiment)
    assert exp.artifact_location == str(out_dir.parent / "mlartifacts")

    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.run("bad") as run_id:
            seen["id"] = run_id
            raise RuntimeError("boom")
    assert client.get_run(seen["id"]).info.status == "FAILED"
    assert tracker.run_id is None


def test_log_config(tracker, client):
    cfg = tracker.cfg
    with tracker.run("cfg") as run_id:
        tracker.log_config(cfg)
    params = client.get_run(run_id).data.params
    assert params["train.lr"] == "0.003"
    assert params["model.heads_emo_to_int"] == "2"
    assert params["data.modalities.0.dim"] == "512"
    assert params["data.modalities.2.folder"] == "RoBERTa"
    assert params["train.betas"] == "[0.9, 0.999]"
    assert params["tracking.experiment"] == cfg.tracking.experiment
    assert "config.yaml" in [f.path for f in client.list_artifacts(run_id)]
    text = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    assert "heads_emo_to_int: 2" in text


def test_log_config_truncates_long_values(tracker, client):
    with tracker.run("long") as run_id:
        tracker.log_config({"a": {"b": "x" * 7000}, "c": list(range(3))})
    params = client.get_run(run_id).data.params
    assert len(params["a.b"]) == 6000 and params["c"] == "[0, 1, 2]"


def test_log_metrics_history(tracker, client):
    with tracker.run("metrics") as run_id:
        for step, value in enumerate([0.5, float("nan"), 0.7, 0.9]):
            tracker.log_metrics(
                {"val_joint": value, "note": "text", "loss": np.float32(1.0 / (step + 1))},
                step=step,
            )
        tracker.log_metrics(
            {
                "joint": torch.tensor(0.25),
                "inf": math.inf,
                "flag": np.bool_(True),
                "ok": True,
                "vec": np.zeros(2),
            },
            prefix="test/",
        )
    history = client.get_metric_history(run_id, "val_joint")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.5),
        (2, 0.7),
        (3, 0.9),
    ]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/joint"] == 0.25 and "note" not in metrics
    assert not {"test/inf", "test/flag", "test/ok", "test/vec"} & set(metrics)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3]


def test_log_confusion_dict_and_artifact(tracker, client, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "f.txt").write_text("f")
    with tracker.run("plots") as run_id:
        tracker.log_confusion(
            [[5, 1, 0], [2, 7, 1], [0, 0, 9]],
            ["happy", "sad", "neutral"],
            "emotion (validation)",
            "confusion/emotion.png",
        )
        tracker.log_dict({"f1": np.float64(0.5), "n": 3, "arr": np.arange(2)}, "eval/report.json")
        tracker.log_artifact(tmp_path / "d", "dir")
        tracker.log_artifact(tmp_path / "f.txt")
    png = Path(client.download_artifacts(run_id, "confusion/emotion.png", str(tmp_path / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    report = Path(client.download_artifacts(run_id, "eval/report.json", str(tmp_path / "dl")))
    assert json.loads(report.read_text()) == {"f1": 0.5, "n": 3, "arr": [0, 1]}
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"confusion", "eval", "dir", "f.txt"} <= top
    assert [f.path for f in client.list_artifacts(run_id, "dir")] == ["dir/a.txt"]


def test_log_model_and_download(tracker, tmp_path):
    cfg = tracker.cfg
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    ckpt = checkpoint.save(tmp_path / "ckpt", state, cfg, meta={"epoch": 3})
    with tracker.run("model") as run_id:
        tracker.log_model(ckpt)
    local = download_model(f"runs:/{run_id}/model", str(tmp_path / "dst"))
    assert Path(local).is_dir() and Path(local).resolve().is_relative_to(
        (tmp_path / "dst").resolve()
    )
    model, loaded_cfg, meta = checkpoint.load(local)
    assert meta["epoch"] == 3 and loaded_cfg.model == cfg.model
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_disabled_tracker_writes_nothing(tmp_path):
    import mlflow

    cfg = make_cfg(tmp_path / "fresh" / "o", "tracking.enabled=false")
    t = Tracker(cfg)
    with t.run("x") as run_id:
        with t.run("y", nested=True) as child:
            t.log_config(cfg)
            t.log_metrics({"a": 1.0}, step=0)
            t.log_dict({"a": 1}, "a.json")
            t.log_artifact(tmp_path / "missing")
            t.log_confusion([[1]], ["a"], "t", "c.png")
            t.log_model(tmp_path / "missing")
    assert run_id is None and child is None and t.run_id is None
    assert mlflow.active_run() is None
    assert not (tmp_path / "fresh").exists()


def test_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_uri("runs/demo")
    assert uri == "sqlite:///" + str(tmp_path / "runs" / "mlflow.db") and uri.startswith(
        "sqlite:////"
    )
    assert default_uri("runs/demo/") == uri
    assert resolve_uri(make_cfg("runs/demo")) == uri
    assert resolve_uri(make_cfg("o", "tracking.uri=sqlite:///x/m.db")) == "sqlite:///" + str(
        tmp_path / "x" / "m.db"
    )
    assert resolve_uri(make_cfg("o", "tracking.uri=sqlite:////abs/m.db")) == "sqlite:////abs/m.db"
    assert (
        resolve_uri(make_cfg("o", "tracking.uri=http://127.0.0.1:5055")) == "http://127.0.0.1:5055"
    )
    for bad in ("file:///tmp/mlruns", "./mlruns", "mlruns"):
        with pytest.raises(ConfigError, match="file store is deprecated in MLflow 3.x.*sqlite"):
            resolve_uri(make_cfg("o", f"tracking.uri={bad}"))
    with pytest.raises(ConfigError):
        Tracker(make_cfg("o", "tracking.uri=file:///tmp/mlruns"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reachable(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow tracking server at {uri} is not reachable"):
        check_reachable(uri, timeout=5.0)
    assert time.monotonic() - start < 10
    # a socket that accepts connections but never answers: the timeout bounds the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingError, match="not reachable"):
            check_reachable(uri, timeout=1.0)
        assert time.monotonic() - start < 5
    # sqlite: the directory is created, no db file yet
    check_reachable("sqlite:///" + str(tmp_path / "new" / "mlflow.db"))
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "mlflow.db").exists()
    (tmp_path / "blocker").write_text("")
    with pytest.raises(TrackingError, match="cannot create"):
        check_reachable("sqlite:///" + str(tmp_path / "blocker" / "sub" / "mlflow.db"))
