"""The Python API (`import meiju_ray`): the README's notebook example run as it is, in-memory
prediction in every accepted input form, and logging that works without any `logging` setup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import meiju_ray
from meiju_ray.data.batching import iter_batches
from meiju_ray.data.packing import load_split
from meiju_ray.data.synth import write_world
from meiju_ray.model.network import build_model
from meiju_ray.train import checkpoint
from meiju_ray.train.engine import predict_probs
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    marker = "<!-- notebook-example:"
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start : text.index("```\n", start)]


@pytest.mark.timeout(900)  # a fresh interpreter imports torch + MLflow: slow on a busy machine
def test_readme_notebook_example_runs_as_written(tmp_path):
    """A fresh interpreter (as a notebook kernel: no logging configured) in a directory laid out
    as the README says (experiments/, worlds/smoke from `meiju-ray synth`)."""
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    write_world(tmp_path / "worlds" / "smoke", seed=1, scale=0.001, unlabeled=20)  # Track 1 dims
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"validation joint \d\.\d{3}; model runs:/[0-9a-f]{32}/model", out), out
    assert re.search(r"u1\s+\w+\s+0\.\d+\s+\w+\s+0\.\d+", out) and "u2" in out, out
    assert re.search(r"evaluate: joint \d\.\d{3} on \d+ rows", out), out
    # meiju_ray's INFO lines reached stderr with no logging configured (the epoch lines)
    assert re.search(r"\d\d:\d\d:\d\d I .*epoch", proc.stderr), proc.stderr[-2000:]
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # the store the README names
    assert (tmp_path / "runs" / "smoke" / "checkpoint" / "model.pt").is_file()


@pytest.fixture(scope="module")
def model_and_split(tiny_world, tmp_path_factory):
    from tests.conftest import small_config

    root = tmp_path_factory.mktemp("api")
    cfg = small_config(tiny_world, root / "o", f"data.cache_dir={root / 'packed'}")
    torch.manual_seed(0)
    ckpt = checkpoint.save(root / "ckpt", build_model(cfg).state_dict(), cfg)
    return ckpt, cfg, load_split(cfg.data, cfg.data.val_split)


def test_predict_takes_every_feature_form_and_matches_the_checkpoint(model_and_split):
    ckpt, cfg, split = model_and_split
    model, _, _ = checkpoint.load(ckpt)
    ref = predict_probs(model, iter_batches(split, 64), torch.device("cpu"))
    names = list(split.values)
    frame = pd.DataFrame(
        {"id": split.ids} | {n: [split.frames(n, i) for i in range(len(split))] for n in names}
    )
    as_dict = {c: list(frame[c]) for c in frame.columns}
    as_rows = [
        {"id": u} | {n: split.frames(n, i).tolist() for n in names} for i, u in enumerate(split.ids)
    ]
    cols = [f"p_intent_{label}" for label in cfg.data.intent_labels]
    for features in (frame, as_dict, as_rows, split):
        for target in (ckpt, str(ckpt), checkpoint.load(ckpt)):
            out = meiju_ray.predict(target, features)
            assert list(out["id"]) == split.ids
            np.testing.assert_allclose(out[cols].to_numpy(), ref["intent"], atol=1e-6)
            assert list(out["emotion"]) == [
                cfg.data.emotion_labels[k] for k in ref["emotion"].argmax(1)
            ]
    # rows in a different order come back in that order
    shuffled = frame.iloc[::-1].reset_index(drop=True)
    assert list(meiju_ray.predict(ckpt, shuffled)["id"]) == split.ids[::-1]


def test_predict_names_what_is_wrong_with_the_features(model_and_split):
    ckpt, cfg, split = model_and_split
    a, v, t = (m.dim for m in cfg.data.modalities)
    good = {"id": ["x"], "A": [np.zeros((3, a))], "V": [np.zeros((2, v))], "L": [np.zeros((1, t))]}
    assert len(meiju_ray.predict(ckpt, good)) == 1
    with pytest.raises(ValueError, match=r"no column for modality 'L'.*L \[T, \d+\]"):
        meiju_ray.predict(ckpt, {k: good[k] for k in ("id", "A", "V")})
    with pytest.raises(ValueError, match=rf"utterance 'x': modality 'A' must be \[T, {a}\]"):
        meiju_ray.predict(ckpt, good | {"A": [np.zeros((3, a + 1))]})
    with pytest.raises(ValueError, match="NaN or Inf"):
        meiju_ray.predict(ckpt, good | {"V": [np.full((2, v), np.nan)]})
    # an utterance-level vector is a one-frame sequence, as for .npy files
    assert len(meiju_ray.predict(ckpt, good | {"L": [np.zeros(t)]})) == 1


def test_load_config_takes_dicts_and_strings_and_fails_on_unknown_keys(tmp_path):
    from meiju_ray.config import ConfigError

    cfg = meiju_ray.load_config(
        REPO / "experiments" / "smoke.yaml",
        {"train.epochs": 2, "model.classifier": [16, 8], "data.root": str(tmp_path)},
        "train.lr=1e-3",
    )
    assert (cfg.train.epochs, cfg.model.classifier, cfg.train.lr) == (2, [16, 8], 1e-3)
    assert cfg.data.root == str(tmp_path)
    with pytest.raises(ConfigError, match="train.epoch"):
        meiju_ray.load_config(REPO / "experiments" / "smoke.yaml", {"train.epoch": 2})


def test_logging_reaches_stderr_without_setup_and_steps_aside_for_a_configured_root():
    code = (
        "import logging\n"
        "import meiju_ray.tracking.api as api\n"
        "log = logging.getLogger('meiju_ray')\n"
        "api.log_to_stderr(); api.log_to_stderr()  # idempotent\n"
        "log.info('first line')\n"
        "logging.basicConfig(format='ROOT %(message)s', level=logging.INFO)\n"
        "log.info('second line')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "line" in ln]
    assert re.fullmatch(r"\d\d:\d\d:\d\d I first line", lines[0]), lines
    assert lines[1:] == ["ROOT second line"]  # once, through the user's handler


def test_entry_points_keep_the_submodules_of_the_same_name_reachable():
    from meiju_ray.pipeline import run_pipeline

    assert meiju_ray.pipeline.run_pipeline is run_pipeline
    assert meiju_ray.train.checkpoint is checkpoint
    assert Path(meiju_ray.train.engine.__file__).name == "engine.py"
    assert "teacher -> pseudo-labels -> student" in meiju_ray.pipeline.__doc__
