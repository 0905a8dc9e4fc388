"""Online consistency (EMA teacher, FixMatch / UDA / SoftMatch): hand-computed mechanics and the
engine wiring. The learning test (the pool must help) is tests/test_ssl_learning.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meiju_ray.config import ConsistencyConfig, LossConfig, TrainConfig
from meiju_ray.data.batching import iter_batches
from meiju_ray.data.packing import PackedSplit
from meiju_ray.train import consistency as cons
from meiju_ray.train.engine import fit, predict_probs

CPU = torch.device("cpu")


def test_ema_update_by_hand():
    student, teacher = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        student.weight.fill_(3.0), student.bias.fill_(-1.0)
        teacher.weight.fill_(1.0), teacher.bias.fill_(1.0)
    cons.ema_update(teacher, student, decay=0.75)  # 0.75 * t + 0.25 * s
    assert float(teacher.weight) == pytest.approx(1.5) and float(teacher.bias) == pytest.approx(0.5)
    assert float(student.weight) == 3.0  # the student is untouched
    frozen = cons.make_teacher(student)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training


def test_sharpen_by_hand():
    q = torch.tensor([[0.5, 0.25, 0.25]])
    # squares (T = 0.5): 0.25, 0.0625, 0.0625 -> / 0.375
    torch.testing.assert_close(cons.sharpen(q, 0.5), torch.tensor([[2 / 3, 1 / 6, 1 / 6]]))
    assert cons.sharpen(q, 1.0) is q


def _outputs(emotion: torch.Tensor, intent: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"emotion": emotion, "intent": intent}


def test_confidence_mask_and_hard_targets_by_hand():
    """FixMatch: only rows whose teacher confidence reaches the bar count; the mean is over all
    rows of the batch."""
    cfg = ConsistencyConfig(weight=1.0, targets="hard", weighting="mask", threshold=0.9)
    teacher = torch.tensor([[0.95, 0.05], [0.6, 0.4]])  # row 0 passes, row 1 does not
    student = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    loss, parts = cons.consistency_loss(_outputs(student, student), _outputs(teacher, teacher), cfg)
    row0 = -F.log_softmax(student[0], -1)[0]  # target class 0
    assert float(loss) == pytest.approx(2 * float(row0) / 2)  # both tasks, mean over 2 rows
    assert parts["cons_emotion_weight"] == pytest.approx(0.5)


def test_soft_targets_are_sharpened_teacher_probabilities():
    cfg = ConsistencyConfig(weight=1.0, targets="soft", weighting="mask", threshold=0.0)
    teacher = torch.tensor([[0.5, 0.25, 0.25]])
    student = torch.tensor([[0.3, -0.2, 0.1]])
    loss, _ = cons.consistency_loss(_outputs(student, student), _outputs(teacher, teacher), cfg)
    target = torch.tensor([2 / 3, 1 / 6, 1 / 6])
    ce = -(target * F.log_softmax(student[0], -1)).sum()
    assert float(loss) == pytest.approx(2 * float(ce), rel=1e-5)


def test_softmatch_weights_by_hand():
    """Weight 1 at or above the running mean confidence, a Gaussian fall-off below it."""
    cfg = ConsistencyConfig(weight=1.0, weighting="softmatch")
    state = cons.SoftMatchState(momentum=0.0)  # statistics = this batch's
    conf = torch.tensor([0.9, 0.6, 0.3])
    w = cons.row_weights(conf, cfg, state, "emotion", 3)
    mean, var = 0.6, float(torch.tensor([0.9, 0.6, 0.3]).var())
    assert state.mean["emotion"] == pytest.approx(mean)
    assert state.var["emotion"] == pytest.approx(var)
    expected = [1.0, 1.0, math.exp(-((0.3 - mean) ** 2) / (2 * var))]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    # with momentum the statistics move only part of the way from their start (1/C, 1)
    slow = cons.SoftMatchState(momentum=0.9)
    cons.row_weights(conf, cfg, slow, "emotion", 3)
    assert slow.mean["emotion"] == pytest.approx(0.9 / 3 + 0.1 * mean)


def test_weight_ramps_up_over_the_warmup():
    cfg = ConsistencyConfig(weight=2.0, warmup_epochs=3)
    assert [cons.ramp(e, cfg) for e in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


# ---- engine wiring -------------------------------------------------------------------------------


def _two_clusters(n: int, rng: np.random.Generator, labels: np.ndarray | None = None):
    """Two elongated clusters split by a wide gap at x = 0: class 0 at x = -2, class 1 at x = +2,
    spread far along y. One frame of 2 features per row."""
    y = rng.integers(0, 2, n) if labels is None else labels
    x = np.stack([np.where(y == 1, 2.0, -2.0) + rng.normal(0, 0.4, n), rng.normal(0, 3.0, n)], 1)
    return x.astype(np.float32), y


def _split(x: np.ndarray, y: np.ndarray | None) -> PackedSplit:
    n = len(x)
    labels = np.full(n, -1, np.int64) if y is None else y.astype(np.int64)
    return PackedSplit(
        ids=[f"r{i}" for i in range(n)],
        values={"A": x},
        offsets={"A": np.arange(n + 1, dtype=np.int64)},
        emotion=labels,
        intent=labels.copy(),
        weight=np.ones(n, np.float32),
    )


def _model_cfg(tmp_path):
    from tests.conftest import small_config

    return small_config(
        tmp_path,
        tmp_path,
        "data.modalities=[{name: A, folder: a, dim: 2}]",
        "data.emotion_labels=[a, b]",
        "data.intent_labels=[a, b]",
        "model.hidden=16",
        "model.fusion_heads=2",
        "model.heads_emo_to_int=2",
        "model.heads_int_to_emo=2",
        "model.fusion_ff=16",
        "model.classifier=[16]",
        "model.dropout=0.0",
        "model.input_dropout=0.0",
    )


def _accuracy(model, split: PackedSplit) -> float:
    probs = predict_probs(model, iter_batches(split, 256), CPU)
    return float((probs["emotion"].argmax(1) == split.emotion).mean())


def _train(cfg, train, val, pool, consistency: ConsistencyConfig, seed: int):
    from meiju_ray.model.network import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    t = TrainConfig(epochs=15, batch_size=4, lr=3e-3, patience=0, schedule="constant")
    result = fit(
        model,
        t,
        LossConfig(),
        CPU,
        train_batches=lambda e: iter_batches(train, 4, True, seed + e, False),
        val_batches=lambda: iter_batches(val, 256, False),
        pool_batches=lambda s: iter_batches(pool, 32, True, s, False),
        consistency=consistency,
    )
    model.load_state_dict(result.best_state)
    return model, result


def test_consistency_off_is_bit_identical_to_plain_training(tmp_path):
    torch.set_num_threads(1)
    cfg = _model_cfg(tmp_path)
    rng = np.random.default_rng(1)
    train, val = _split(*_two_clusters(24, rng)), _split(*_two_clusters(8, rng))
    pool = _split(_two_clusters(40, rng)[0], None)
    a, ra = _train(cfg, train, val, pool, ConsistencyConfig(weight=0.0), 0)
    from meiju_ray.model.network import build_model

    torch.manual_seed(0)
    plain = build_model(cfg)
    t = TrainConfig(epochs=15, batch_size=4, lr=3e-3, patience=0, schedule="constant")
    rb = fit(
        plain,
        t,
        LossConfig(),
        CPU,
        train_batches=lambda e: iter_batches(train, 4, True, 0 + e, False),
        val_batches=lambda: iter_batches(val, 256, False),
    )
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]


def test_pool_term_runs_and_the_ema_teacher_is_what_is_validated(tmp_path):
    torch.set_num_threads(1)
    cfg = _model_cfg(tmp_path)
    rng = np.random.default_rng(2)
    train, val = _split(*_two_clusters(24, rng)), _split(*_two_clusters(8, rng))
    pool = _split(_two_clusters(40, rng)[0], None)
    on = ConsistencyConfig(weight=1.0, warmup_epochs=0, ema_decay=0.99, evaluate="ema")
    _, result = _train(cfg, train, val, pool, on, 0)
    assert all(0 < h["train_cons_emotion_weight"] <= 1 for h in result.history)
    assert all(np.isfinite(h["train_cons_emotion"]) for h in result.history)
    # decay 0 -> the teacher is the student after every step: evaluating either is the same
    same = ConsistencyConfig(weight=1.0, warmup_epochs=0, ema_decay=0.0, evaluate="ema")
    other = ConsistencyConfig(weight=1.0, warmup_epochs=0, ema_decay=0.0, evaluate="model")
    _, ema_result = _train(cfg, train, val, pool, same, 3)
    _, model_result = _train(cfg, train, val, pool, other, 3)
    assert [h["val_joint"] for h in ema_result.history] == [
        h["val_joint"] for h in model_result.history
    ]
