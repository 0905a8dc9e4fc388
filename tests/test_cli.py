"""End to end through the real CLI: synth -> train -> evaluate -> predict, and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meiju_ray.cli import main
from meiju_ray.labels import EMOTIONS, INTENTS
from tests.conftest import REPO, SMALL_MODS

MODS = SMALL_MODS  # data.modalities=... for the small-dims worlds


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "train",
        str(REPO / "experiments" / "smoke.yaml"),
        f"data.root={root}",
        f"output_dir={out}",
        f"data.modalities={MODS}",
        f"data.cache_dir={out.parent / 'packed'}",
        "tracking.enabled=false",  # MLflow logging is tested in tests/tracking/test_standalone.py
        *extra,
    ]


def test_synth_train_predict_end_to_end(small_world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(small_world, out, "train.epochs=12")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"emo", "int", "joint", "best_epoch", "majority_baseline"} <= set(metrics)
    # the model learned: clearly better than always predicting the majority class
    assert metrics["joint"] > metrics["majority_baseline"]["joint"] + 0.15, metrics
    assert (out / "checkpoint" / "model.pt").is_file() and (out / "config.yaml").is_file()
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]

    capsys.readouterr()
    assert main(["-q", "evaluate", "--checkpoint", str(out / "checkpoint"), "--json"]) == 0
    printed = capsys.readouterr().out.splitlines()
    evaluated = json.loads(printed[-1])
    assert evaluated["joint"] == pytest.approx(
        metrics["joint"], abs=1e-9
    )  # same numbers as training saw

    sub = tmp_path / "submission.csv"
    assert main(["-q", "predict", "--checkpoint", str(out / "checkpoint"), "--out", str(sub)]) == 0
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["filename", "emo_pred", "int_pred"]
    listed = [
        line.split()[0][:-4]
        for line in (small_world / "Annotation" / "Testing_files.txt").read_text().splitlines()
    ]
    assert [r[0] for r in rows[1:]] == listed  # one row per listed id, in list order
    assert all(r[1] in EMOTIONS and r[2] in INTENTS for r in rows[1:])
    # and the predictions are good against the hidden test labels, not just well-formed
    truth = dict(
        (line.split()[0], line.split()[1:])
        for line in (small_world / "hidden" / "Testing_labels.txt").read_text().splitlines()
    )
    acc_int = np.mean([truth[r[0]][1] == r[2] for r in rows[1:]])
    assert acc_int > 0.3


def test_small_pool_is_pseudo_labelled_in_process_without_starting_ray(small_world, tmp_path):
    """A fresh process (as a user runs it): 120 pool rows < pseudo.in_process_below -> no Ray."""
    out = tmp_path / "run"
    assert main(train_args(small_world, out, "train.epochs=3")) == 0
    exe = Path(sys.executable).parent / "meiju-ray"
    args = train_args(small_world, out)[2:]  # the same experiment + overrides, without "-q train"
    res = subprocess.run(
        [
            str(exe),
            "pseudo-label",
            *args,
            "pseudo.threshold=0.5",
            "--checkpoint",
            str(out / "checkpoint"),
            "--out",
            str(tmp_path / "pseudo"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "pseudo" / "summary.json").read_text())
    assert (
        summary["engine"] == "in_process" and summary["n_rows"] == 120 and summary["n_selected"] > 0
    )
    assert "in this process" in res.stderr and "Ray cluster" not in res.stderr


def test_training_is_reproducible(tiny_world, tmp_path):
    for name in ("a", "b"):
        assert main(train_args(tiny_world, tmp_path / name, "train.epochs=2")) == 0
    a = json.loads((tmp_path / "a" / "history.json").read_text())
    b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]


def test_console_script_help():
    exe = Path(sys.executable).parent / "meiju-ray"
    for sub in ("synth", "pack", "train", "evaluate", "predict"):
        res = subprocess.run([str(exe), sub, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: meiju-ray" in res.stdout


def test_pack_command(tiny_world, tmp_path, capsys):
    cfg = REPO / "experiments" / "smoke.yaml"
    assert (
        main(
            [
                "-q",
                "pack",
                str(cfg),
                f"data.root={tiny_world}",
                f"data.modalities={MODS}",
                f"data.cache_dir={tmp_path / 'c'}",
                "--splits",
                "Training",
                "NoAnnotation",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "c").glob("*/manifest.json"))) == 2


# ---- bad input: exit 2, one clear line, nothing half written ------------------------------------


def run_bad(capsys, args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    return err


def broken_world(tiny_world: Path, tmp_path: Path) -> Path:
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world, ignore=shutil.ignore_patterns(".meiju_packed"))
    return world


def test_unknown_config_key(tiny_world, tmp_path, capsys):
    err = run_bad(capsys, train_args(tiny_world, tmp_path / "run", "train.epochz=3"))
    assert "unknown config key 'train.epochz'" in err and "smoke.yaml" in err
    err = run_bad(capsys, train_args(tiny_world, tmp_path / "run", "train.epochs=many"))
    assert "config key 'train.epochs': expected int" in err
    assert not (tmp_path / "run").exists()


def test_missing_required_keys(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("seed: 1\n")
    assert "'data.root' must be set" in run_bad(capsys, ["train", str(tmp_path / "e.yaml")])


def test_unknown_label_in_list(tiny_world, tmp_path, capsys):
    world = broken_world(tiny_world, tmp_path)
    lst = world / "Annotation" / "Training_files.txt"
    lines = lst.read_text().splitlines()
    lines[4] = lines[4].split()[0] + " joyful neutral"
    lst.write_text("\n".join(lines) + "\n")
    err = run_bad(capsys, train_args(world, tmp_path / "run"))
    assert f"{lst}:5: unknown emotion label 'joyful'" in err
    assert (
        not (tmp_path / "run" / "metrics.json").exists()
        and not (tmp_path / "run" / "checkpoint").exists()
    )


def test_wrong_feature_dim(tiny_world, tmp_path, capsys):
    world = broken_world(tiny_world, tmp_path)
    victim = sorted(
        (world / "Annotation" / "features" / "ResNet-50").glob("Track1_Validation_*.npy")
    )[2]
    np.save(victim, np.zeros((3, 99), np.float32))
    err = run_bad(capsys, train_args(world, tmp_path / "run"))
    assert str(victim) in err and "D=99" in err


def test_nan_and_missing_features(tiny_world, tmp_path, capsys):
    world = broken_world(tiny_world, tmp_path)
    victim = sorted((world / "Annotation" / "features" / "wav2vec").glob("Track1_Training_*.npy"))[
        1
    ]
    np.save(victim, np.full((3, 24), np.inf, np.float32))
    assert "NaN or Inf" in run_bad(capsys, train_args(world, tmp_path / "run"))
    victim.unlink()
    err = run_bad(capsys, train_args(world, tmp_path / "run"))
    assert "missing feature file" in err and victim.stem in err


def test_predict_with_missing_checkpoint(tmp_path, capsys):
    err = run_bad(
        capsys,
        ["predict", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "s.csv")],
    )
    assert "not a checkpoint directory" in err and not (tmp_path / "s.csv").exists()


def test_unwritable_output_dir(tiny_world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = run_bad(capsys, train_args(tiny_world, blocker / "run"))
    assert "not writable" in err


def test_outputs_never_replace_what_the_user_did_not_ask_to_replace(tiny_world, tmp_path, capsys):
    """predict --out refuses a checkpoint's own files, a directory and a path under a file;
    pseudo-label --out refuses a directory that is not an earlier pseudo-label output."""
    run = tmp_path / "run"
    assert main(train_args(tiny_world, run, "train.epochs=1")) == 0
    ckpt = run / "checkpoint"
    weights = (ckpt / "model.pt").read_bytes()
    (tmp_path / "file").write_text("x")
    for out, message in (
        (ckpt / "model.pt", "inside a checkpoint directory"),
        (ckpt / "submission.csv", "inside a checkpoint directory"),
        (tmp_path, "is a directory"),
        (tmp_path / "file" / "s.csv", "is a file, not a directory"),
    ):
        err = run_bad(capsys, ["predict", "--checkpoint", str(ckpt), "--out", str(out)])
        assert message in err, err
    assert (ckpt / "model.pt").read_bytes() == weights
    # pseudo-label into the run directory itself, or a folder with the user's notes
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    for out in (run, notes):
        args = train_args(tiny_world, run)[2:]
        err = run_bad(capsys, ["pseudo-label", *args, "--checkpoint", str(ckpt), "--out", str(out)])
        assert "already holds other files" in err, err
    assert (notes / "notes.txt").read_text() == "mine"
    assert (run / "metrics.json").is_file() and (ckpt / "model.pt").read_bytes() == weights


def test_a_second_writer_is_refused_and_a_failed_rerun_keeps_the_old_run_consistent(
    tiny_world, tmp_path, capsys
):
    from meiju_ray.fileio import locked_dir

    run = tmp_path / "run"
    assert main(train_args(tiny_world, run, "train.epochs=1")) == 0
    before = {n: (run / n).read_text() for n in ("config.yaml", "metrics.json")}
    with locked_dir(run):  # another live run holds the directory
        err = run_bad(capsys, train_args(tiny_world, run, "train.epochs=1"))
    assert f"in use by another run (pid {os.getpid()})" in err
    # a re-run that fails (a feature file of the new data is broken) changes nothing
    world = broken_world(tiny_world, tmp_path)
    victim = sorted((world / "Annotation" / "features" / "wav2vec").glob("*Training*.npy"))[0]
    np.save(victim, np.zeros((2, 3, 4), np.float32))
    run_bad(capsys, train_args(world, run, "train.epochs=2"))
    assert {n: (run / n).read_text() for n in ("config.yaml", "metrics.json")} == before
