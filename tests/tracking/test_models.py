"""Checkpoints as MLflow models (tracking.models): pyfunc logging, loading and prediction, the
registry with an alias, and `--checkpoint` references, against a real MLflow sqlite store and a
real `mlflow server`.

One store and two checkpoints (a single model, a 2-seed ensemble) are shared by the module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.data.batching import iter_batches
from meiju_ray.data.packing import load_split
from meiju_ray.model.network import build_model
from meiju_ray.tracking.tracker import Tracker
from meiju_ray.train import checkpoint
from meiju_ray.train.engine import predict_probs
from tests.conftest import small_config
from tests.servers import mlflow_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tiny_world, tmp_path_factory):
    """A config on a fresh sqlite store, a single-model checkpoint and a 2-member ensemble."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("models")
    cfg = small_config(
        tiny_world,
        root / "runs" / "o",
        f"data.cache_dir={root / 'packed'}",
        "tracking.experiment=models-test",
    )
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(
            checkpoint.save(root / f"seed{seed}", build_model(cfg).state_dict(), cfg, {"epoch": 4})
        )
    ensemble = checkpoint.save_ensemble(root / "ensemble", ckpts)
    yield cfg, ckpts[0], ensemble, root
    mlflow.set_tracking_uri(before)  # a Tracker sets MLflow's global URI: keep it in this module


def split_frame(split):
    """A PackedSplit as the pyfunc input: id + one [T, D] array per modality and row."""
    import pandas as pd

    table = {"id": split.ids}
    for name in split.values:
        table[name] = [split.frames(name, i) for i in range(len(split))]
    return pd.DataFrame(table)


def reference_probs(ckpt, split):
    model, _, _ = checkpoint.load(ckpt)
    return predict_probs(model, iter_batches(split, 64), torch.device("cpu"))


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_logged_model_loads_with_pyfunc_and_predicts_like_the_checkpoint(store, kind):
    import mlflow

    cfg, single, ensemble, _ = store
    ckpt = single if kind == "single" else ensemble
    tracker = Tracker(cfg)
    with tracker.run(f"stage-{kind}") as run_id:
        info = tracker.log_model(ckpt)
    # an MLflow model of the run: in "Logged models", with a signature and an input example
    run = tracker.client.get_run(run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [info.model_id]
    assert tracker.client.get_logged_model(info.model_id).name == "model"
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    inputs = loaded.metadata.signature.inputs.input_names()
    assert inputs == ["id", "A", "V", "L"]
    assert (
        loaded.metadata.get_input_schema() is not None and loaded.metadata.saved_input_example_info
    )
    assert loaded.metadata.metadata["meiju_ray"]["ensemble_of"] == (2 if kind == "ensemble" else 1)

    val = load_split(cfg.data, cfg.data.val_split)
    out = loaded.predict(split_frame(val))
    ref = reference_probs(ckpt, val)
    assert list(out["id"]) == val.ids
    emo_cols = [f"p_emotion_{label}" for label in cfg.data.emotion_labels]
    int_cols = [f"p_intent_{label}" for label in cfg.data.intent_labels]
    np.testing.assert_allclose(out[emo_cols].to_numpy(), ref["emotion"], atol=1e-6)
    np.testing.assert_allclose(out[int_cols].to_numpy(), ref["intent"], atol=1e-6)
    labels = np.array(cfg.data.emotion_labels)[ref["emotion"].argmax(1)]
    assert list(out["emotion"]) == list(labels)
    assert list(out["intent"]) == list(np.array(cfg.data.intent_labels)[ref["intent"].argmax(1)])
    np.testing.assert_allclose(out["emotion_prob"], ref["emotion"].max(1), atol=1e-6)
    # the saved input example is what predict takes
    example = loaded.input_example
    assert len(loaded.predict(example)) == len(example)
    # meiju_ray.predict hands features in any form to a loaded MLflow model
    import pandas.testing

    import meiju_ray

    pandas.testing.assert_frame_equal(meiju_ray.predict(loaded, val), out)


def test_registry_alias_and_checkpoint_references(store, tmp_path, capsys):
    import mlflow

    from meiju_ray.cli import main
    from meiju_ray.tracking.models import register, resolve_checkpoint
    from meiju_ray.train.inference import evaluate_checkpoint

    cfg, single, ensemble, _ = store
    tracker = Tracker(cfg)
    name = "meiju-models-test"
    with tracker.run("first") as first:
        v1 = register(tracker.client, name, tracker.log_model(single).model_id, first, "champion")
    assert v1["alias"] == "champion" and v1["uri"] == f"models:/{name}@champion"
    for ref in (f"runs:/{first}/model", f"models:/{name}/{v1['version']}", v1["uri"]):
        local = resolve_checkpoint(ref, tracker.uri)
        assert (local / "model.pt").read_bytes() == (single / "model.pt").read_bytes(), ref
        assert resolve_checkpoint(ref, tracker.uri) == local  # the same reference: the same path
    # a newer version takes the alias; the alias then names it
    with tracker.run("second") as second:
        v2 = register(
            tracker.client, name, tracker.log_model(ensemble).model_id, second, "champion"
        )
    assert v2["version"] == v1["version"] + 1
    local = resolve_checkpoint(v2["uri"], tracker.uri)
    assert checkpoint.ensemble_members(local) is not None
    assert (
        int(tracker.client.get_model_version_by_alias(name, "champion").version) == (v2["version"])
    )
    # a downloaded MLflow model directory is a checkpoint reference too
    downloaded = mlflow.artifacts.download_artifacts(
        f"runs:/{first}/model", dst_path=str(tmp_path), tracking_uri=tracker.uri
    )
    assert (resolve_checkpoint(downloaded) / "model.pt").is_file()
    # unknown names say what was asked for, where
    with pytest.raises(FileNotFoundError, match="models:/nope@champion"):
        resolve_checkpoint("models:/nope@champion", tracker.uri)

    # the CLI: evaluate --checkpoint models:/<name>@<alias> scores what the directory scores
    capsys.readouterr()
    args = ["-q", "evaluate", "--checkpoint", v2["uri"], "--tracking-uri", tracker.uri, "--json"]
    assert main(args) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scored["joint"] == pytest.approx(evaluate_checkpoint(ensemble)["joint"], abs=1e-9)
    assert (
        main(["-q", "evaluate", "--checkpoint", "models:/nope/1", "--tracking-uri", tracker.uri])
        == 2
    )
    assert "models:/nope/1" in capsys.readouterr().err
    # predict --checkpoint runs:/... writes what the directory writes
    sub, local_sub = tmp_path / "sub.csv", tmp_path / "local.csv"
    args = ["-q", "predict", "--checkpoint", f"runs:/{first}/model", "--tracking-uri", tracker.uri]
    assert main([*args, "--out", str(sub)]) == 0
    assert main(["-q", "predict", "--checkpoint", str(single), "--out", str(local_sub)]) == 0
    assert sub.read_text() == local_sub.read_text() and len(sub.read_text().splitlines()) > 1


def test_teacher_checkpoint_uri_survives_path_anchoring(tmp_path):
    from meiju_ray.config import anchor_paths

    cfg = small_config(tmp_path, tmp_path / "o", "tune.teacher_checkpoint=models:/teacher@champion")
    assert anchor_paths(cfg, tmp_path).tune.teacher_checkpoint == "models:/teacher@champion"
    cfg = small_config(tmp_path, tmp_path / "o", "tune.teacher_checkpoint=t/checkpoint")
    assert anchor_paths(cfg, tmp_path).tune.teacher_checkpoint == str(tmp_path / "t/checkpoint")


def test_models_through_a_real_mlflow_server(store, tmp_path):
    """Log, register and load a model over HTTP, as on a shared tracking server."""
    import mlflow

    from meiju_ray.tracking.models import register, resolve_checkpoint

    cfg, single, _, _ = store
    db = "sqlite:///" + str(tmp_path / "server.db")
    with mlflow_server(db) as base:
        server_cfg = small_config(
            Path(cfg.data.root),
            tmp_path / "o",
            f"data.cache_dir={cfg.data.cache_dir}",
            f"tracking.uri={base}",
            "tracking.experiment=served",
        )
        tracker = Tracker(server_cfg)
        with tracker.run("served") as run_id:
            info = tracker.log_model(single)
        reg = register(tracker.client, "served-model", info.model_id, run_id, "champion")
        loaded = mlflow.pyfunc.load_model(reg["uri"])
        val = load_split(cfg.data, cfg.data.val_split)
        out = loaded.predict(split_frame(val))
        ref = reference_probs(single, val)
        cols = [f"p_intent_{label}" for label in cfg.data.intent_labels]
        np.testing.assert_allclose(out[cols].to_numpy(), ref["intent"], atol=1e-6)
        local = resolve_checkpoint(reg["uri"], base)
        assert (local / "model.pt").read_bytes() == (single / "model.pt").read_bytes()
