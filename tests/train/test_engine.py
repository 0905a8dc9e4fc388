"""Training engine: LR schedules, `fit` and sample weights.

`fit` is checked for learning, best-state, early stopping and callbacks.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.config import TrainConfig
from meiju_ray.data.batching import collate, iter_batches
from meiju_ray.data.packing import load_split
from meiju_ray.model.losses import joint_loss
from meiju_ray.model.network import build_model
from meiju_ray.train import engine, metrics
from tests.conftest import small_config

torch.set_num_threads(1)
CPU = torch.device("cpu")


# ---- LR schedules --------------------------------------------------------------------------------


def test_lr_factor_constant():
    cfg = TrainConfig(epochs=10, schedule="constant", constant_epochs=3)
    assert [engine.lr_factor(e, cfg) for e in range(10)] == [1.0] * 10
    assert engine.lr_factor(0, TrainConfig(epochs=5, schedule="constant")) == 1.0


def test_lr_factor_linear_is_the_baseline_rule():
    # baseline: niter=15 epochs at full LR, then niter_decay=45 epochs of linear decay
    cfg = TrainConfig(epochs=60, schedule="linear", constant_epochs=15)
    f = [engine.lr_factor(e, cfg) for e in range(60)]
    assert f[:15] == [1.0] * 15
    assert f[14] == 1.0
    assert f[15] == pytest.approx(1 - 1 / 46)
    assert f[16] == pytest.approx(1 - 2 / 46)
    assert f[59] == pytest.approx(1 / 46) and 0 < f[59] < 0.05
    # same as lr_l = 1 - max(0, epoch + epoch_count - niter) / (niter_decay + 1), epoch_count = 1
    for e in range(60):
        assert f[e] == pytest.approx(1.0 - max(0, e + 1 - 15) / (45 + 1))
    assert all(a > b for a, b in zip(f[14:], f[15:]))  # strictly decreasing after the plateau


def test_lr_factor_cosine():
    cfg = TrainConfig(epochs=10, schedule="cosine", constant_epochs=0)
    f = [engine.lr_factor(e, cfg) for e in range(10)]
    assert f[0] == pytest.approx(1.0) and f[5] == pytest.approx(0.5)
    assert f[9] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.9))) and f[9] < 0.03
    assert all(a > b for a, b in zip(f, f[1:])) and all(0 < x <= 1 for x in f)
    warm = TrainConfig(epochs=10, schedule="cosine", constant_epochs=4)
    g = [engine.lr_factor(e, warm) for e in range(10)]
    assert g[:5] == [1.0] * 5  # 4 constant epochs, then progress 0
    assert g[7] == pytest.approx(0.5)  # halfway through the 6 decay epochs


# ---- fit on a small synthetic world --------------------------------------------------------------


@pytest.fixture(scope="module")
def world(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    cfg = small_config(
        small_world,
        tmp / "o",
        f"data.cache_dir={tmp / 'c'}",
        "train.num_threads=1",
        "train.epochs=5",
    )
    train = load_split(cfg.data, "Training")
    val = load_split(cfg.data, "Validation")
    return cfg, train, val


def batches_for(cfg, split, shuffle=True):
    return lambda epoch=0: iter_batches(split, cfg.train.batch_size, shuffle=shuffle, seed=epoch)


def state_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def fitted(world):
    cfg, train, val = world
    engine.seed_everything(0)
    model = build_model(cfg)
    calls, snapshots = [], {}

    def on_epoch(epoch, m, is_best):
        calls.append((epoch, m, is_best))
        if is_best:
            snapshots[epoch] = state_copy(model)

    result = engine.fit(
        model,
        cfg.train,
        cfg.loss,
        CPU,
        batches_for(cfg, train),
        lambda: iter_batches(val, 64),
        on_epoch=on_epoch,
    )
    return model, result, calls, snapshots


def test_fit_learns_well_above_majority(world, fitted):
    cfg, train, val = world
    _, result, _, _ = fitted
    floor = metrics.majority_scores(
        train.emotion, train.intent, val.emotion, val.intent, cfg.train.track
    )
    # the synthetic world is deliberately hard; the majority floor is ~0.08 joint
    assert result.best["joint"] > max(2 * floor["joint"], floor["joint"] + 0.15), (
        result.best,
        floor,
    )
    assert result.best["emo"] > floor["emo"] + 0.1 and result.best["int"] > floor["int"] + 0.1
    assert result.best["joint"] == pytest.approx(
        metrics.joint_score(result.best["emo"], result.best["int"])
    )
    h = result.history
    assert len(h) == cfg.train.epochs and not result.stopped_early
    assert h[-1]["train_loss"] < 0.8 * h[0]["train_loss"]
    for m in h:  # the LR actually used follows the schedule
        assert m["lr"] == pytest.approx(cfg.train.lr * engine.lr_factor(m["epoch"], cfg.train))
    assert result.seconds > 0


def test_on_epoch_once_per_epoch_with_consistent_best_flags(fitted):
    _, result, calls, _ = fitted
    assert [c[0] for c in calls] == list(range(len(result.history)))
    assert [c[1] for c in calls] == result.history
    running = -1.0
    for epoch, m, is_best in calls:
        assert m["epoch"] == epoch
        assert is_best == (m["val_joint"] > running), (epoch, m["val_joint"], running)
        running = max(running, m["val_joint"])
    best_epochs = [e for e, _, b in calls if b]
    assert best_epochs and result.best_epoch == best_epochs[-1]
    assert result.best["joint"] == result.history[result.best_epoch]["val_joint"] == running


def test_best_state_is_a_snapshot_that_reproduces_the_best_score(world, fitted):
    cfg, _, val = world
    model, result, _, snapshots = fitted
    # the stored state is the model as it was at the best epoch, not a view of the live weights
    expected = snapshots[result.best_epoch]
    assert set(result.best_state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(result.best_state[k], v), k
    live = dict(model.named_parameters())
    before = {k: v.clone() for k, v in result.best_state.items()}
    with torch.no_grad():
        for p in live.values():
            p.add_(1.0)
    assert all(torch.equal(before[k], result.best_state[k]) for k in before)
    # a fresh model (other init) with the best state reproduces the best validation scores
    torch.manual_seed(123)
    fresh = build_model(cfg)
    fresh.load_state_dict(result.best_state)
    scores = engine.evaluate(fresh, iter_batches(val, 17), CPU, cfg.train.track)
    assert scores["joint"] == pytest.approx(result.best["joint"], abs=1e-9)
    assert scores["emo"] == pytest.approx(result.best["emo"], abs=1e-9)
    assert scores["probs"]["emotion"].shape == (len(val), len(cfg.data.emotion_labels))
    np.testing.assert_array_equal(scores["probs"]["index"], np.arange(len(val)))


def test_early_stopping_with_a_frozen_model(world):
    cfg, train, val = world
    small_train = train.subset(np.arange(48))
    tcfg = dataclasses.replace(cfg.train, lr=1e-9, patience=2, epochs=10, weight_decay=0.0)
    engine.seed_everything(0)
    model = build_model(cfg)
    calls = []
    result = engine.fit(
        model,
        tcfg,
        cfg.loss,
        CPU,
        batches_for(cfg, small_train),
        lambda: iter_batches(val, 64),
        on_epoch=lambda e, m, b: calls.append(b),
    )
    # nothing improves after epoch 0, so training stops after epoch best + patience
    assert result.stopped_early
    assert result.best_epoch == 0
    assert len(result.history) == result.best_epoch + tcfg.patience + 1 == 3
    assert calls == [True, False, False]


def test_patience_reached_on_the_last_epoch_is_not_early(world):
    cfg, train, val = world
    tcfg = dataclasses.replace(cfg.train, lr=1e-9, patience=2, epochs=3, weight_decay=0.0)
    engine.seed_everything(0)
    result = engine.fit(
        build_model(cfg),
        tcfg,
        cfg.loss,
        CPU,
        batches_for(cfg, train.subset(np.arange(32))),
        lambda: iter_batches(val, 64),
    )
    assert len(result.history) == 3 and not result.stopped_early


@pytest.mark.parametrize("weight, changes", [(0.0, False), (1.0, True)])
def test_zero_sample_weight_leaves_parameters_alone(world, weight, changes):
    cfg, train, _ = world
    rows = train.subset(np.arange(16))
    rows.weight = np.full(len(rows), weight, dtype=np.float32)
    tcfg = dataclasses.replace(cfg.train, weight_decay=0.0, lr=1e-2)
    engine.seed_everything(0)
    model = build_model(cfg)
    opt = engine.make_optimizer(model, tcfg)
    before = state_copy(model)
    stats = engine.train_one_epoch(
        model, [collate(rows, np.arange(16))], opt, cfg.loss, CPU, grad_clip=1.0
    )
    heads = [k for k in before if k.startswith(("heads.", "aux_heads."))]
    assert heads
    changed = [k for k in heads if not torch.equal(before[k], model.state_dict()[k])]
    if changes:  # the control: with weight 1 the same step does move the heads
        assert changed and stats["loss"] > 0
    else:
        assert not changed and stats["loss"] == 0.0
        moved = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
        assert not moved, moved


def test_train_one_epoch_reports_row_weighted_means(world):
    cfg, train, _ = world
    cfg = copy.deepcopy(cfg)
    cfg.model.dropout = cfg.model.input_dropout = 0.0  # train-mode forward == eval-mode forward
    engine.seed_everything(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays exactly as it is
    b1, b2 = collate(train, np.arange(10)), collate(train, np.arange(10, 13))
    stats = engine.train_one_epoch(model, [b1, b2], opt, cfg.loss, CPU)
    assert {"loss", "emotion", "intent", "emotion_aux", "intent_aux"} <= set(stats)
    with torch.no_grad():
        l1, p1 = joint_loss(model(b1), b1, cfg.loss)
        l2, p2 = joint_loss(model(b2), b2, cfg.loss)
    # epoch means weight each batch by its number of rows: (10 * batch1 + 3 * batch2) / 13
    assert stats["loss"] == pytest.approx((10 * float(l1) + 3 * float(l2)) / 13, rel=1e-5)
    assert stats["emotion"] == pytest.approx(
        (10 * p1["emotion"] + 3 * p2["emotion"]) / 13, rel=1e-5
    )


# ---- a non-finite loss stops training before any weight or checkpoint is touched ---------------


def _world_copy_with_a_huge_value(tiny_world, tmp_path):
    import shutil

    root = tmp_path / "world"
    shutil.copytree(tiny_world, root)
    first = (root / "Annotation" / "Training_files.txt").read_text().split()[0]  # <id>.mp4
    path = root / "Annotation" / "features" / "wav2vec" / f"{Path(first).stem}.npy"
    x = np.load(path)
    x[0, 0] = 3e38  # finite in float32, but the first layer overflows to inf
    np.save(path, x)
    return root, path.stem


def test_one_exploding_row_stops_training_naming_its_id(tiny_world, tmp_path):
    from meiju_ray.train.local import run_local

    root, bad_id = _world_copy_with_a_huge_value(tiny_world, tmp_path)
    cfg = small_config(root, tmp_path / "run", "train.epochs=2", f"data.cache_dir={tmp_path / 'p'}")
    with pytest.raises(engine.NonFiniteLoss, match=rf"epoch 1, batch \d+: rows .*{bad_id}"):
        run_local(cfg)
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_diverging_learning_rate_stops_with_a_clear_error(tiny_world, tmp_path):
    from meiju_ray.train.local import run_local

    cfg = small_config(
        tiny_world,
        tmp_path / "run",
        "train.epochs=3",
        "train.lr=1e30",
        "train.grad_clip=0",
        f"data.cache_dir={tmp_path / 'p'}",
    )
    with pytest.raises(engine.NonFiniteLoss, match="no single row is to blame") as info:
        run_local(cfg)
    assert isinstance(info.value, ValueError)  # the CLI's one-line error and exit 2
    assert not (tmp_path / "run" / "checkpoint").exists()
