"""What a run records: standalone `train`, `evaluate` and `pseudo-label` each log one MLflow run
(real sqlite store) with the code's git commit, a description and the data as dataset inputs;
`--version` and `--print-config`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from meiju_ray.cli import main
from meiju_ray.data.packing import MANIFEST, pack_split
from tests.conftest import REPO, SMALL_MODS

pytestmark = pytest.mark.timeout(300)
SMOKE = str(REPO / "experiments" / "smoke.yaml")


def experiment(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        SMOKE,
        f"data.root={root}",
        f"output_dir={out}",
        f"data.modalities={SMALL_MODS}",
        f"data.cache_dir={out.parent / 'packed'}",
        "train.epochs=2",
        "tracking.experiment=standalone",
        *extra,
    ]


def test_train_evaluate_and_pseudo_label_each_log_one_run(tiny_world, tmp_path, capsys):
    from mlflow import MlflowClient

    from meiju_ray.config import load_config
    from meiju_ray.tracking.provenance import git_commit

    out = tmp_path / "runs" / "t"
    assert main(["-q", "train", *experiment(tiny_world, out)]) == 0
    ckpt = out / "checkpoint"
    capsys.readouterr()
    assert main(["-q", "evaluate", "--checkpoint", str(ckpt), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    client = MlflowClient("sqlite:///" + str(tmp_path / "runs" / "mlflow.db"))
    exp = client.get_experiment_by_name("standalone")
    (train_run,) = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    # the teacher named by its MLflow model (in the experiment's own store)
    teacher = f"runs:/{train_run.info.run_id}/model"
    pseudo = tmp_path / "pseudo"
    args = ["-q", "pseudo-label", *experiment(tiny_world, out), "--checkpoint", teacher]
    assert main([*args, "--out", str(pseudo), "pseudo.threshold=0.2"]) == 0
    runs = {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id])}
    used = Path(runs["pseudo_label"].data.tags["teacher"])
    assert (used / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    assert set(runs) == {"train", "evaluate", "pseudo_label"}
    assert all(r.info.status == "FINISHED" for r in runs.values())

    train = runs["train"]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_joint")] == [1, 2]
    (output,) = train.outputs.model_outputs  # the model, as an MLflow model of the run
    assert client.get_logged_model(output.model_id).name == "model"
    note = train.data.tags["mlflow.note.content"]
    assert note.startswith("Trained the paper model") and "Best validation joint" in note
    assert f"runs:/{train.info.run_id}/model" in note
    # the code's commit, when the code runs from a git checkout (this one)
    commit = git_commit()
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", commit)
        subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", commit], check=True)
    assert train.data.tags.get("mlflow.source.git.commit") == commit
    assert all(r.data.tags.get("mlflow.source.git.commit") == commit for r in runs.values())

    # the data as dataset inputs: root, split sizes, the packing fingerprint
    cfg = load_config(SMOKE, experiment(tiny_world, out)[1:])
    inputs = {}
    for d in train.inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        inputs[tags["split"]] = (d.dataset, tags)
    assert set(inputs) == {"Training", "Validation"}
    for split, (dataset, tags) in inputs.items():
        manifest = json.loads((pack_split(cfg.data, split) / MANIFEST).read_text())
        assert dataset.digest == tags["fingerprint"] == manifest["fingerprint"]
        assert int(tags["rows"]) == manifest["rows"] > 0
        assert dataset.name == f"{tiny_world.name}/{split}"
        assert json.loads(dataset.source)["uri"] == str(tiny_world.resolve())
    assert {
        t.value for d in train.inputs.dataset_inputs for t in d.tags if t.key.endswith("context")
    } == {
        "training",
        "validation",
    }

    ev = runs["evaluate"]
    assert ev.data.metrics["Validation_joint"] == pytest.approx(evaluated["joint"])
    assert ev.data.tags["checkpoint"] == str(ckpt)
    assert "Evaluated" in ev.data.tags["mlflow.note.content"]
    assert {"confusion_emotion.png", "confusion_intent.png"} <= {
        a.path for a in client.list_artifacts(ev.info.run_id)
    }
    summary = json.loads((pseudo / "summary.json").read_text())
    pl = runs["pseudo_label"]
    assert pl.data.metrics["n_selected"] == summary["n_selected"]
    assert "Pseudo-labelled" in pl.data.tags["mlflow.note.content"]
    (pool,) = pl.inputs.dataset_inputs
    assert {t.key: t.value for t in pool.tags}["rows"] == str(summary["n_rows"])

    # tracking.enabled=false: no run
    off = tmp_path / "runs" / "off"
    assert main(["-q", "train", *experiment(tiny_world, off, "tracking.enabled=false")]) == 0
    assert main(["-q", "evaluate", "--checkpoint", str(ckpt), "--no-tracking"]) == 0
    assert len(client.search_runs([exp.experiment_id])) == 3


def test_version_and_print_config(tmp_path, capsys):
    import meiju_ray

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"meiju-ray {meiju_ray.__version__}"
    for command in ("train", "pipeline", "tune"):
        out = tmp_path / command
        args = [command, SMOKE, f"data.root={tmp_path}", f"output_dir={out}", "train.epochs=7"]
        assert main([*args, "--print-config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["train"]["epochs"] == 7 and printed["output_dir"] == str(out)
        assert printed["tracking"]["model_alias"] == "champion"  # every key, defaults included
        assert not out.exists()  # nothing ran
    # an unknown key still fails, before anything is printed
    assert main(["train", SMOKE, "train.epoch=7", "--print-config"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_pipeline_prints_the_runs_view_link_and_the_registered_model(tiny_world, tmp_path, capsys):
    """`meiju-ray pipeline` (tiny world: in-process, no Ray) ends with the direct link to the
    experiment's runs view and the registered final model."""
    from mlflow import MlflowClient

    out = tmp_path / "runs" / "p"
    args = experiment(tiny_world, out, "train.epochs=1", "tracking.register_model=tiny-final")
    capsys.readouterr()
    assert main(["-q", "pipeline", *args]) == 0
    printed = capsys.readouterr().out
    client = MlflowClient("sqlite:///" + str(tmp_path / "runs" / "mlflow.db"))
    exp = client.get_experiment_by_name("standalone")
    assert f"runs:       http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs" in printed
    assert "model:      models:/tiny-final@champion" in printed
    version = client.get_model_version_by_alias("tiny-final", "champion")
    (student,) = client.search_runs([exp.experiment_id], "tags.stage = 'student'")
    assert version.run_id == student.info.run_id
