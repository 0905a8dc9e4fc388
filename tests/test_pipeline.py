"""Ray Data pseudo-labelling, Ray Train DDP (incl. a killed worker) and the pipeline with MLflow."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from meiju_ray.data.layout import DataError
from meiju_ray.data.packing import load_split
from meiju_ray.distributed.pseudo_label import run_pseudo_label
from meiju_ray.distributed.train import run_train
from meiju_ray.pipeline import run_pipeline
from meiju_ray.pseudo.labelling import PSEUDO_FILE, SUMMARY_FILE, load_pseudo_rows
from meiju_ray.tracking.tracker import TrackingError
from tests.conftest import small_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def teacher(small_world, tmp_path_factory):
    """A teacher trained in-process on the small world (shared by the pseudo-label tests)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = small_config(
        small_world, out / "t", f"data.cache_dir={out / 'packed'}", "train.epochs=10"
    )
    run_train(cfg)
    return cfg, out / "t" / "checkpoint"


def pseudo_cfg(cfg, *overrides):
    from meiju_ray.config import ExperimentConfig, parse_override, set_dotted

    tree = cfg.to_dict()
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    return ExperimentConfig.from_dict(tree)


def test_pseudo_labels_respect_threshold_and_are_repeatable(ray_cluster, teacher, tmp_path):
    cfg, ckpt = teacher
    cfg = pseudo_cfg(cfg, "pseudo.threshold=0.6", "pseudo.rule=per_task")
    info = run_pseudo_label(cfg, ckpt, tmp_path / "a")
    table = pq.read_table(tmp_path / "a" / PSEUDO_FILE).to_pandas()
    assert len(table) == info["n_rows"] == 120
    kept_emo = table["emotion"] >= 0
    assert (table.loc[kept_emo, "emotion_conf"] >= 0.6).all()
    assert (table.loc[~kept_emo, "emotion_conf"] < 0.6).all()
    assert (table.loc[kept_emo, "emotion"] == table.loc[kept_emo, "emotion_pred"]).all()
    assert info["n_selected"] > 0 and info["emotion_accuracy"] is not None  # hidden truth was found
    summary = json.loads((tmp_path / "a" / SUMMARY_FILE).read_text())
    assert summary["n_selected"] == int(table["selected"].sum())
    # same inputs, 2 actors sharing 4 smaller shards, smaller inference batches: the same output
    run_pseudo_label(
        pseudo_cfg(cfg, "pseudo.actors=2", "data.rows_per_shard=32", "pseudo.batch_size=16"),
        ckpt,
        tmp_path / "b",
    )
    again = pq.read_table(tmp_path / "b" / PSEUDO_FILE).to_pandas()
    assert again["id"].tolist() == table["id"].tolist()
    assert again["selected"].tolist() == table["selected"].tolist()
    np.testing.assert_allclose(
        np.stack(again["emotion_probs"]), np.stack(table["emotion_probs"]), atol=1e-5
    )
    rows = load_pseudo_rows(cfg, tmp_path / "a")
    assert len(rows) == info["n_selected"] and set(rows.ids) == set(
        table.loc[table["selected"], "id"]
    )
    assert (rows.emotion[rows.emotion >= 0] < 7).all()


def test_in_process_engine_matches_ray_data(ray_cluster, teacher):
    from meiju_ray.data.layout import UNLABELED
    from meiju_ray.data.packing import pack_split
    from meiju_ray.distributed.pseudo_label import infer_pool, inference_engine

    cfg, ckpt = teacher
    cfg = pseudo_cfg(
        cfg, "data.rows_per_shard=32", "pseudo.max_rows=100", "pseudo.actors=0"
    )  # 0: sized from Ray
    assert inference_engine(cfg, 100) == "ray_data"  # Ray was started by someone else: use it
    packed = pack_split(cfg.data, UNLABELED)
    ray_ids, ray_emo, ray_int = infer_pool(cfg, ckpt, packed, "ray_data")
    ids, emo, intent = infer_pool(cfg, ckpt, packed, "in_process")
    assert ids == ray_ids and len(ids) == 100
    np.testing.assert_allclose(emo, ray_emo, atol=1e-5)
    np.testing.assert_allclose(intent, ray_int, atol=1e-5)


def test_max_rows_caps_the_pool_across_shards(ray_cluster, teacher, tmp_path):
    cfg, ckpt = teacher
    info = run_pseudo_label(
        pseudo_cfg(cfg, "pseudo.max_rows=50", "data.rows_per_shard=32", "pseudo.threshold=0.6"),
        ckpt,
        tmp_path / "p",
    )
    table = pq.read_table(tmp_path / "p" / PSEUDO_FILE)
    assert info["n_rows"] == table.num_rows == 50 and len(set(table.column("id").to_pylist())) == 50


def test_empty_selection_is_normal(ray_cluster, teacher, tmp_path):
    cfg, ckpt = teacher
    info = run_pseudo_label(
        pseudo_cfg(cfg, "pseudo.threshold=1.0", "pseudo.calibrate=none"), ckpt, tmp_path / "p"
    )
    assert info["n_selected"] == 0 and info["selection_rate"] == 0
    assert len(load_pseudo_rows(cfg, tmp_path / "p")) == 0


def test_pseudo_label_bad_inputs(ray_cluster, teacher, tmp_path):
    cfg, ckpt = teacher
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        run_pseudo_label(cfg, tmp_path / "missing", tmp_path / "p")
    assert not (tmp_path / "p").exists()
    # an unlabelled pool whose visual features have the wrong D
    world = tmp_path / "world"
    shutil.copytree(Path(cfg.data.root), world, ignore=shutil.ignore_patterns(".meiju_packed"))
    victim = sorted((world / "NoAnnotation" / "features" / "ResNet-50").glob("*.npy"))[3]
    np.save(victim, np.zeros((2, 13), np.float32))
    bad = pseudo_cfg(cfg, f"data.root={world}", f"data.cache_dir={tmp_path / 'packed'}")
    with pytest.raises(DataError, match=f"{victim.name}.*D=13"):
        run_pseudo_label(bad, ckpt, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="keep it below"):
        run_pseudo_label(
            pseudo_cfg(cfg, "pseudo.actors=4", "pseudo.cpus_per_actor=1"), ckpt, tmp_path / "p"
        )
    # 2 x 0.75 of 2 CPUs would leave Ray Data's 1-CPU ListFiles task unschedulable: a silent hang
    with pytest.raises(ValueError, match="keep it below"):
        run_pseudo_label(
            pseudo_cfg(cfg, "pseudo.actors=2", "pseudo.cpus_per_actor=0.75"), ckpt, tmp_path / "p"
        )


def test_ddp_two_workers_learn_like_one_process(ray_cluster, small_world, tmp_path):
    base = ("train.epochs=8", f"data.cache_dir={tmp_path / 'packed'}")
    local = run_train(small_config(small_world, tmp_path / "local", *base))
    ddp = run_train(
        small_config(
            small_world,
            tmp_path / "ddp",
            *base,
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.5",
        )
    )
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(history) == 8 and history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert ddp["joint"] > ddp["majority_baseline"]["joint"] + 0.1
    assert abs(ddp["joint"] - local["joint"]) < 0.12, (ddp["joint"], local["joint"])
    assert (tmp_path / "ddp" / "checkpoint" / "model.pt").is_file()
    # the same output_dir again with another config: a new run, not Ray Train restoring the old one
    again = run_train(
        small_config(
            small_world,
            tmp_path / "ddp",
            *base[1:],
            "train.epochs=2",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
        )
    )
    assert len(json.loads((tmp_path / "ddp" / "history.json").read_text())) == 2
    assert again["resumed_from_epoch"] == 0 and again["num_workers"] == 1


def _kill_one_worker_after_first_checkpoint(storage: Path, marker: Path, started: float) -> None:
    """SIGKILL one Ray Train worker process once the run has persisted a checkpoint (from outside:
    the production loop has no fault hooks)."""
    import psutil

    deadline = time.time() + 300

    # three complete checkpoint dirs: the earlier ones are then persisted and registered with the
    # Train controller (a kill right after the first upload could land before its registration)
    def complete() -> int:
        return sum(1 for d in storage.glob("*/checkpoint_*") if (d / "train_state.pt").is_file())

    while time.time() < deadline and complete() < 3:
        time.sleep(0.2)
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        # a worker of this run: earlier tests on the same cluster may leave Train workers behind
        if proc.info["create_time"] >= started and "RayTrainWorker" in " ".join(
            proc.info["cmdline"] or []
        ):
            marker.write_text(str(proc.info["pid"]))
            proc.kill()
            return


def test_killed_worker_is_replaced_and_training_resumes(ray_cluster, small_world, tmp_path):
    from meiju_ray.distributed.train import run_distributed

    cfg = small_config(
        small_world,
        tmp_path / "run",
        "train.epochs=10",  # the kill lands after epoch 2, far from the end of the run
        "train.patience=0",
        f"data.cache_dir={tmp_path / 'packed'}",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",
        "scaling.max_failures=1",
        "model.hidden=64",
        "train.batch_size=8",
    )
    marker = tmp_path / "killed.pid"
    killer = threading.Thread(
        target=_kill_one_worker_after_first_checkpoint,
        args=(tmp_path / "run" / "ray_train", marker, time.time() - 1),
        daemon=True,
    )
    killer.start()
    metrics = run_distributed(cfg)
    killer.join(timeout=5)
    assert marker.is_file()  # a worker really was SIGKILLed once
    assert metrics["resumed_from_epoch"] >= 1  # ... and the replacement resumed from a checkpoint
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(10))


def test_pipeline_writes_outputs_and_mlflow_runs(ray_cluster, small_world, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "runs" / "pipe"
    cfg = small_config(
        small_world,
        out,
        "train.epochs=6",
        f"data.cache_dir={tmp_path / 'packed'}",
        "pseudo.threshold=0.5",
        "tracking.experiment=pipe-test",
        "tracking.register_model=pipe-model",
    )
    metrics = run_pipeline(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["teacher"]["joint"] > 0 and saved["student"]["joint"] > 0
    assert saved["n_pseudo"] == metrics["n_pseudo"] > 0
    assert saved["gain_joint"] == pytest.approx(
        saved["student"]["joint"] - saved["teacher"]["joint"]
    )
    rows = list(csv.reader((out / "submission.csv").open()))
    n_test = len((small_world / "Annotation" / "Testing_files.txt").read_text().splitlines())
    assert rows[0] == ["filename", "emo_pred", "int_pred"] and len(rows) == 1 + n_test

    client = MlflowClient(saved["mlflow"]["tracking_uri"])
    assert saved["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    exp = client.get_experiment_by_name("pipe-test")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = saved["mlflow"]["parent_run_id"]
    assert {"teacher", "pseudo_r1", "student_r1"} <= set(runs)
    for name in ("teacher", "pseudo_r1", "student_r1"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent
        assert runs[name].info.status == "FINISHED"
    assert runs["teacher"].data.params["train.lr"] == "0.003"
    assert len(client.get_metric_history(runs["student_r1"].info.run_id, "val_joint")) == 6
    assert runs["pseudo_r1"].data.metrics["n_selected"] == saved["n_pseudo"]
    artifacts = {a.path for a in client.list_artifacts(runs["teacher"].info.run_id)}
    assert {"config.yaml", "confusion_emotion.png", "confusion_intent.png"} <= artifacts
    # every trained stage is an MLflow model of its run (Logged models: runs:/<run>/model)
    for name in ("teacher", "student_r1"):
        (output,) = client.get_run(runs[name].info.run_id).outputs.model_outputs
        assert client.get_logged_model(output.model_id).name == "model"
    assert "summary.json" in {a.path for a in client.list_artifacts(runs["pseudo_r1"].info.run_id)}
    assert "submission.csv" in {a.path for a in client.list_artifacts(parent)}
    assert client.get_run(parent).data.metrics["student_joint"] == pytest.approx(
        saved["student"]["joint"]
    )
    # the logged model loads back and predicts
    from meiju_ray.tracking.tracker import download_model
    from meiju_ray.train import checkpoint

    model_dir = download_model(
        f"runs:/{runs['student_r1'].info.run_id}/model",
        tmp_path / "dl",
        tracking_uri=saved["mlflow"]["tracking_uri"],
    )
    model, loaded_cfg, _ = checkpoint.load(model_dir)
    assert loaded_cfg.model.hidden == cfg.model.hidden
    # the final model is registered, its alias names it, and pyfunc predicts the test split
    import mlflow

    reg = saved["mlflow"]["registered_model"]
    assert reg["uri"] == "models:/pipe-model@champion" and reg["version"] == 1
    assert saved["mlflow"]["final_model"] == f"runs:/{runs['student_r1'].info.run_id}/model"
    test = load_split(loaded_cfg.data, cfg.data.test_split)
    frame = {"id": test.ids} | {
        m: [test.frames(m, i) for i in range(len(test))] for m in test.values
    }
    served = mlflow.pyfunc.load_model(reg["uri"]).predict(pd.DataFrame(frame))
    assert [[r.id, r.emotion, r.intent] for r in served.itertuples()] == rows[1:]

    # what the parent run records: description, the data as dataset inputs, the per-class figure
    from meiju_ray.tracking.provenance import per_class_f1, runs_url
    from meiju_ray.train.metrics import confusion

    for name, start in (
        ("teacher", "Pipeline stage teacher: the paper model"),
        ("pseudo_r1", "Pseudo-labelled 120 unlabelled rows"),
        ("student_r1", "Pipeline stage student_r1: the paper model"),
    ):
        assert (
            client.get_run(runs[name].info.run_id)
            .data.tags["mlflow.note.content"]
            .startswith(start)
        ), name
    top = client.get_run(parent)
    note = top.data.tags["mlflow.note.content"]
    assert note.startswith("Pipeline on ") and f"{saved['n_pseudo']} pseudo-labelled rows" in note
    assert f"student {saved['student']['joint']:.3f}" in note and reg["uri"] in note
    splits = {{t.key: t.value for t in d.tags}["split"]: d for d in top.inputs.dataset_inputs}
    assert set(splits) == {"Training", "Validation", "Testing", "NoAnnotation"}
    assert {t.key: t.value for t in splits["NoAnnotation"].tags}["rows"] == "120"
    assert {"per_class.png", "per_class.json"} <= {a.path for a in client.list_artifacts(parent)}
    per_class = json.loads(Path(client.download_artifacts(parent, "per_class.json")).read_text())
    assert per_class["split"] == "Testing" and set(per_class["f1"]) == {"teacher", "student"}
    # the student's per-class F1 is what its submission scores against the withheld labels
    labels = loaded_cfg.data.emotion_labels
    truth = {
        line.split()[0]: line.split()[1]
        for line in (small_world / "hidden" / "Testing_labels.txt").read_text().splitlines()
    }
    true = np.array([labels.index(truth[r[0]]) for r in rows[1:]])
    pred = np.array([labels.index(r[1]) for r in rows[1:]])
    expected = per_class_f1(confusion(true, pred, len(labels)))
    got = [per_class["f1"]["student"]["emotion"][label] for label in labels]
    assert got == pytest.approx(expected)
    url = runs_url(saved["mlflow"]["tracking_uri"], saved["mlflow"]["experiment_id"])
    assert url == f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"


def test_pipeline_fails_fast_on_unreachable_tracking_server(ray_cluster, tiny_world, tmp_path):
    cfg = small_config(tiny_world, tmp_path / "run", "tracking.uri=http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="not reachable"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "teacher").exists()


def test_pipeline_unwritable_output_dir(ray_cluster, tiny_world, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        run_pipeline(small_config(tiny_world, tmp_path / "file" / "run"))


# ---- semi-supervised: online consistency under Ray Train, the parallel teacher ensemble ----------


def test_online_consistency_under_ray_train_reads_pool_shards(ray_cluster, small_world, tmp_path):
    """2 gloo workers, each with its own Ray Data shard of the pool (get_dataset_shard): the
    consistency term runs on every step, and the EMA teacher is what gets saved."""
    cfg = small_config(
        small_world,
        tmp_path / "run",
        "train.epochs=3",
        "train.patience=0",
        f"data.cache_dir={tmp_path / 'packed'}",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",
        "consistency.weight=1.0",
        "consistency.warmup_epochs=0",
        "model.hidden=64",
    )
    metrics = run_train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(0 < h["train_cons_emotion_weight"] <= 1 for h in history)
    assert all(np.isfinite(h["train_cons_intent"]) for h in history)
    assert metrics["num_workers"] == 2 and (tmp_path / "run" / "checkpoint" / "model.pt").is_file()


def test_teacher_ensemble_trains_in_parallel_and_averages_probabilities(
    ray_cluster, small_world, tmp_path
):
    import torch

    from meiju_ray.data.batching import iter_batches
    from meiju_ray.data.packing import load_split
    from meiju_ray.train import checkpoint
    from meiju_ray.train.engine import predict_probs

    out = tmp_path / "pipe"
    cfg = small_config(
        small_world,
        out,
        "train.epochs=3",
        f"data.cache_dir={tmp_path / 'packed'}",
        "pseudo.teachers=2",
        "pseudo.targets=soft",
        "pseudo.threshold=0.0",
        "scaling.cpus_per_worker=1",
        "tracking.enabled=false",
    )
    metrics = run_pipeline(cfg)
    ensemble = out / "teacher" / "checkpoint"
    members = checkpoint.ensemble_members(ensemble)
    assert members == [(out / f"teacher_{k}" / "checkpoint").resolve() for k in (0, 1)]
    assert metrics["teacher"]["joint"] > 0 and metrics["n_pseudo"] == 120  # soft: every row
    assert [checkpoint.load_config_from(m).seed for m in members] == [cfg.seed, cfg.seed + 1]
    # the ensemble's probabilities are the mean of its members'
    val = load_split(cfg.data, cfg.data.val_split)
    cpu = torch.device("cpu")
    probs = [predict_probs(checkpoint.load(d)[0], iter_batches(val, 64), cpu) for d in members]
    mean = (probs[0]["emotion"] + probs[1]["emotion"]) / 2
    together = predict_probs(checkpoint.load(ensemble)[0], iter_batches(val, 64), cpu)
    np.testing.assert_allclose(together["emotion"], mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs[0]["emotion"], probs[1]["emotion"])  # two different seeds


def test_pipeline_checks_the_pool_and_test_split_before_the_teacher(tiny_world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns(".meiju_packed"))
    shutil.rmtree(root / "NoAnnotation")
    cfg = small_config(root, tmp_path / "run", "tracking.enabled=false")
    with pytest.raises(DataError, match="unlabelled pool not found"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "teacher").exists()  # found before any training
    shutil.copytree(tiny_world / "NoAnnotation", root / "NoAnnotation")
    victim = next((root / "Annotation" / "features" / "wav2vec").glob("*Testing*.npy"))
    victim.unlink()
    with pytest.raises(DataError, match=f"missing feature file.*{victim.stem}"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "teacher").exists()
