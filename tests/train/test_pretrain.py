"""Self-supervised pre-training (train/pretrain.py): the NT-Xent loss by hand, what is trained and
kept, how a model starts from it, and the pipeline stage (its MLflow run, its resume fingerprint,
the teacher starting from it)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meiju_ray.data.layout import UNLABELED
from meiju_ray.data.packing import load_split
from meiju_ray.model.losses import nt_xent
from meiju_ray.model.network import BACKBONE_PREFIXES, build_model
from meiju_ray.pipeline import STAGE_FILE, run_pipeline
from meiju_ray.train import checkpoint
from meiju_ray.train.pretrain import pretrain_backbone, pretrain_rows, run_pretrain
from tests.conftest import small_config


def test_nt_xent_by_hand():
    # two rows, orthogonal, each view equal to its pair: every view has cosine 1 to its positive
    # and 0 to the two others, so each of the 4 views costs -log(e / (e + 2)) at T = 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z.clone(), 1.0)) == pytest.approx(math.log(math.e + 2) - 1)
    # at T = 0.5 the similarities double: -log(e^2 / (e^2 + 2))
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(math.e**2 + 2) - 2)
    # the pairs swapped: each view's positive is the orthogonal one
    swapped = float(nt_xent(z, z.flip(0), 1.0))
    assert swapped == pytest.approx(math.log(math.e + 2))
    # scale does not matter (cosine similarity)
    assert float(nt_xent(3 * z, z, 1.0)) == pytest.approx(math.log(math.e + 2) - 1)


def test_pretraining_lowers_its_loss_and_keeps_only_encoders_and_fusion(small_world, tmp_path):
    cfg = small_config(
        small_world,
        tmp_path / "run",
        f"data.cache_dir={tmp_path / 'packed'}",
        "pretrain.epochs=6",
        "pretrain.batch_size=64",
    )
    rows = pretrain_rows(cfg)
    n_train = len(load_split(cfg.data, cfg.data.train_split))
    assert len(rows) == n_train + len(load_split(cfg.data, UNLABELED))  # labelled + pool

    state, history = pretrain_backbone(cfg, rows)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    losses = [h["pretrain_loss"] for h in history]
    # chance for a batch of 64 (127 candidates per view) is log(127) = 4.84
    assert losses[-1] < losses[0] - 0.3 and losses[-1] < math.log(127) - 1.0, losses
    assert state and all(k.startswith(BACKBONE_PREFIXES) for k in state)
    fresh = build_model(cfg).state_dict()
    assert {k for k in fresh if k.startswith(BACKBONE_PREFIXES)} == set(state)


def test_a_model_starts_from_the_backbone_with_its_own_heads(small_world, tmp_path):
    cfg = small_config(
        small_world, tmp_path / "run", f"data.cache_dir={tmp_path / 'packed'}", "pretrain.epochs=1"
    )
    result = run_pretrain(cfg, tmp_path / "pretrain")
    ckpt = tmp_path / "pretrain" / "checkpoint"
    assert result["checkpoint"] == str(ckpt) and checkpoint.is_backbone(ckpt)
    weights = checkpoint.load_weights(ckpt)

    torch.manual_seed(7)
    model = build_model(cfg)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint.load_into(model, weights, ckpt / checkpoint.WEIGHTS, partial=True)
    after = model.state_dict()
    for key, value in after.items():
        expected = weights[key] if key.startswith(BACKBONE_PREFIXES) else own[key]
        assert torch.equal(value, expected), key

    # a backbone of another architecture is named, not silently half-loaded
    other = {k: torch.zeros(3) for k in list(weights)[:1]}
    with pytest.raises(checkpoint.CheckpointError, match="another shape"):
        checkpoint.load_into(model, other, ckpt / checkpoint.WEIGHTS, partial=True)
    with pytest.raises(checkpoint.CheckpointError, match="unexpected keys"):
        checkpoint.load_into(model, {"encoders.Z.w": torch.zeros(1)}, ckpt, partial=True)
    # and a strict load (a student from its teacher) still wants every key
    with pytest.raises(checkpoint.CheckpointError, match="missing keys"):
        checkpoint.load_into(model, weights, ckpt / checkpoint.WEIGHTS)


@pytest.mark.timeout(600)
def test_pipeline_pretrains_first_and_its_teacher_starts_from_it(small_world, tmp_path):
    out = tmp_path / "run"
    base = [
        f"data.cache_dir={tmp_path / 'packed'}",
        "train.epochs=2",
        "pseudo.teachers=1",
        "pseudo.in_process_below=1000000",
        "pretrain.epochs=2",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    # a learning rate that leaves the weights where they start, so the teacher's and the
    # student's encoders + fusion must equal the backbone's
    frozen = ["train.lr=1e-12"]
    metrics = run_pipeline(small_config(small_world, out, *base, *frozen))
    assert metrics["pretrain"]["epochs"] == 2 and metrics["pretrain"]["rows"] > 0
    assert metrics["stage_seconds"]["pretrain"] > 0
    marker = json.loads((out / "pretrain" / STAGE_FILE).read_text())
    assert marker["result"]["loss_last"] == metrics["pretrain"]["loss_last"]
    backbone = checkpoint.load_weights(out / "pretrain" / "checkpoint")
    for stage in ("teacher", "student_r1"):
        weights = checkpoint.load_weights(out / stage / "checkpoint")
        for key, value in backbone.items():
            torch.testing.assert_close(weights[key], value, atol=1e-6, rtol=0, msg=stage + key)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name(metrics["mlflow"]["experiment"]).experiment_id],
        filter_string="tags.stage = 'pretrain'",
    )
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "pretrain_loss")
    assert [m.step for m in history] == [1, 2]

    # resume: the same config reuses it; a changed pre-training setting re-runs pre-training and
    # everything after it
    first = (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns
    teacher = (out / "teacher" / STAGE_FILE).stat().st_mtime_ns
    run_pipeline(small_config(small_world, out, *base, *frozen), resume=True)
    assert (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns == first
    assert (out / "teacher" / STAGE_FILE).stat().st_mtime_ns == teacher
    # a pseudo-label bar does not reach pre-training or the teacher
    run_pipeline(small_config(small_world, out, *base, *frozen, "pseudo.threshold=0.5"), True)
    assert (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns == first
    assert (out / "teacher" / STAGE_FILE).stat().st_mtime_ns == teacher
    # the pool cap changes the rows pre-training sees: a new backbone, so a new teacher
    run_pipeline(small_config(small_world, out, *base, *frozen, "pseudo.max_rows=50"), True)
    assert (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns != first
    teacher_now = (out / "teacher" / STAGE_FILE).stat().st_mtime_ns
    assert teacher_now != teacher
    first = (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns
    changed = [*base, *frozen, "pseudo.max_rows=50", "pretrain.temperature=0.2"]
    run_pipeline(small_config(small_world, out, *changed), resume=True)
    assert (out / "pretrain" / STAGE_FILE).stat().st_mtime_ns != first
    assert (out / "teacher" / STAGE_FILE).stat().st_mtime_ns != teacher_now
