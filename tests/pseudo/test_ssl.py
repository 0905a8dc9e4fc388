"""Semi-supervised mechanics with hand-computed cases: soft targets, noise, class-aware
selection."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.config import AugmentConfig, PseudoLabelConfig
from meiju_ray.data.batching import collate
from meiju_ray.data.packing import PackedSplit
from meiju_ray.model.losses import weighted_ce
from meiju_ray.pseudo.labelling import sharpen, with_pseudo_targets
from meiju_ray.pseudo.selection import (
    adaptive_bars,
    align_distribution,
    class_prior,
    quantile_mask,
    select,
)
from meiju_ray.train.augment import augment_batch, is_active

# ---- soft targets in the loss -------------------------------------------------------------------


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    hard = torch.tensor([-1, -1, -1])
    soft = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])  # row 3: no target at all
    weight = torch.tensor([1.0, 2.0, 7.0])
    # row 1: -log(1/2); row 2: p = (3/4, 1/4): -(0.5 log 3/4 + 0.5 log 1/4); weights 1 and 2
    row1, row2 = math.log(2.0), -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    expected = (1.0 * row1 + 2.0 * row2) / 3.0
    assert float(weighted_ce(logits, hard, weight, soft=soft)) == pytest.approx(expected, rel=1e-6)


def test_hard_and_soft_rows_share_one_normaliser_and_hard_loss_is_unchanged():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    hard_only = weighted_ce(logits[:1], torch.tensor([0]), torch.tensor([1.0]))
    assert float(hard_only) == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    mixed = weighted_ce(
        logits,
        torch.tensor([0, -1]),
        torch.tensor([1.0, 1.0]),
        soft=torch.tensor([[0.0, 0.0], [0.0, 1.0]]),
    )
    assert float(mixed) == pytest.approx(
        (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2, rel=1e-6
    )
    nothing = weighted_ce(logits, torch.tensor([-1, -1]), torch.ones(2), soft=torch.zeros(2, 2))
    assert float(nothing) == 0.0


def test_soft_gradient_equals_kl_gradient():
    """-sum q log p and KL(q || p) differ by the entropy of q only: same gradient."""
    logits = torch.tensor([[0.3, -1.2, 0.7]], requires_grad=True)
    q = torch.tensor([[0.2, 0.1, 0.7]])
    weighted_ce(logits, torch.tensor([-1]), torch.ones(1), soft=q).backward()
    ours = logits.grad.clone()
    logits.grad = None
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), q, reduction="batchmean")
    kl.backward()
    torch.testing.assert_close(ours, logits.grad)


def test_sharpen_and_soft_pseudo_rows():
    p = np.array([[0.6, 0.3, 0.1]])
    assert np.allclose(sharpen(p, 1.0), p)
    sharp = sharpen(p, 0.5)  # p^2 / sum p^2
    assert np.allclose(sharp, p**2 / (p**2).sum()) and sharp[0, 0] > p[0, 0]
    split = _split([3, 2])
    cfg = PseudoLabelConfig(targets="soft", soft_temperature=1.0)
    probs = {
        "emotion": np.array([[0.7, 0.3], [0.4, 0.6]]),
        "intent": np.array([[0.5, 0.5], [0.9, 0.1]]),
    }
    out = with_pseudo_targets(split, np.array([0, -1]), np.array([1, 0]), np.ones(2), probs, cfg)
    assert (out.emotion == -1).all() and (out.intent == -1).all() and out.pseudo.all()
    assert np.allclose(out.soft["emotion"], [[0.7, 0.3], [0.0, 0.0]])  # row 2: emotion not kept
    assert np.allclose(out.soft["intent"], probs["intent"])


# ---- noise for the student -----------------------------------------------------------------------


def _split(lengths: list[int], dim: int = 3, seed: int = 0) -> PackedSplit:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = {
        m: rng.normal(size=(int(offsets[-1]), dim)).astype(np.float32) + 1.0 for m in ("A", "L")
    }
    n = len(lengths)
    return PackedSplit(
        [f"u{i}" for i in range(n)],
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        np.ones(n, np.float32),
        values,
        {m: offsets for m in values},
    )


STRONG = AugmentConfig(
    modality_dropout=0.5, frame_mask=0.3, feature_dropout=0.2, gaussian_mix=0.3, apply_to="all"
)
OFF = AugmentConfig(modality_dropout=0, frame_mask=0, feature_dropout=0, gaussian_mix=0)


def test_noise_never_touches_padded_frames_nor_a_supervised_run_by_default():
    from meiju_ray.train.augment import for_run

    batch = collate(_split([5, 1, 3]), np.arange(3))  # gold rows only
    assert for_run(AugmentConfig(), _split([5, 1, 3])) is None  # a supervised run
    assert augment_batch(batch, OFF) is batch and not is_active(OFF)
    torch.manual_seed(0)
    noisy = augment_batch(batch, STRONG)
    for m in ("A", "L"):
        pad = ~batch[f"{m}_mask"]
        assert torch.count_nonzero(noisy[m][pad]) == 0
        assert not torch.equal(noisy[m], batch[m])  # real frames did change
        assert torch.equal(batch[m], collate(_split([5, 1, 3]), np.arange(3))[m])  # input untouched


def test_modality_dropout_keeps_one_modality_and_frame_mask_keeps_a_frame():
    batch = collate(_split([4] * 64), np.arange(64))
    torch.manual_seed(1)
    noisy = augment_batch(
        batch,
        AugmentConfig(
            modality_dropout=0.9, frame_mask=0.9, feature_dropout=0, gaussian_mix=0, apply_to="all"
        ),
    )
    alive = torch.stack([noisy[m].abs().sum((1, 2)) > 0 for m in ("A", "L")], 1)  # (B, 2)
    assert alive.any(1).all()  # never every modality gone
    assert (~alive).any()  # but modalities were dropped


def test_noise_only_on_pseudo_rows_when_asked():
    split = _split([3, 3])
    split.pseudo = np.array([False, True])
    batch = collate(split, np.arange(2))
    noisy = augment_batch(batch, AugmentConfig(feature_dropout=0.5, apply_to="pseudo"))
    assert torch.equal(noisy["A"][0], batch["A"][0]) and not torch.equal(
        noisy["A"][1], batch["A"][1]
    )


def test_model_outputs_on_real_frames_do_not_depend_on_the_padding():
    """What the noise may leave in padded frames could not matter anyway: the model masks them."""
    from meiju_ray.model.network import build_model
    from tests.conftest import small_config

    tmp = Path(tempfile.mkdtemp())
    cfg = small_config(
        tmp, tmp, "data.modalities=[{name: A, folder: a, dim: 3}, {name: L, folder: l, dim: 3}]"
    )
    model = build_model(cfg).eval()
    batch = collate(_split([2, 5]), np.arange(2))
    garbage = dict(batch)
    for m in ("A", "L"):
        garbage[m] = torch.where(
            batch[f"{m}_mask"][..., None], batch[m], torch.full_like(batch[m], 1e3)
        )
    with torch.no_grad():
        a, b = model(batch), model(garbage)
    for key in ("emotion", "intent"):
        torch.testing.assert_close(a[key], b[key])


# ---- class-aware selection --------------------------------------------------------------------


def test_adaptive_bars_lower_the_bar_of_classes_the_teacher_is_unsure_of():
    pred = np.array([0, 0, 0, 0, 1, 1, 2])
    conf = np.array([0.99, 0.99, 0.99, 0.99, 0.99, 0.5, 0.4])
    bars = adaptive_bars(pred, conf, threshold=0.9, n_classes=3, floor=0.3)
    # sigma = (4, 1, 0): beta = (1, 1/4, 0); M(beta) = (1, 1/7, 0) -> (0.9, 0.9/7, floor)
    assert bars == pytest.approx([0.9, max(0.3, 0.9 / 7), 0.3])
    sel = select(
        _probs(pred, conf, 3),
        _probs(pred, conf, 3),
        PseudoLabelConfig(rule="adaptive", threshold=0.9, min_confidence=0.3),
        "abc",
        "abc",
    )
    # the minority classes now get labels that a single 0.9 bar would refuse
    assert sel.emotion.tolist() == [0, 0, 0, 0, 1, 1, 2]
    fixed = select(
        _probs(pred, conf, 3),
        _probs(pred, conf, 3),
        PseudoLabelConfig(rule="per_task", threshold=0.9),
        "abc",
        "abc",
    )
    assert fixed.emotion.tolist() == [0, 0, 0, 0, 1, -1, -1]


def _probs(pred: np.ndarray, conf: np.ndarray, n: int) -> np.ndarray:
    """Rows whose argmax is pred with max prob conf, the rest spread evenly."""
    out = np.tile(((1 - conf) / (n - 1))[:, None], (1, n))
    out[np.arange(len(pred)), pred] = conf
    return out


def test_distribution_alignment_keeps_a_distribution_and_moves_the_mean_to_the_prior():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([5.0, 1.0, 1.0], size=400)  # the teacher over-predicts class 0
    prior = np.array([1 / 3, 1 / 3, 1 / 3])
    aligned = align_distribution(probs, prior)
    assert np.allclose(aligned.sum(1), 1.0) and (aligned >= 0).all()
    assert np.abs(aligned.mean(0) - prior).sum() < np.abs(probs.mean(0) - prior).sum() / 2
    assert np.allclose(
        align_distribution(probs, probs.mean(0)), probs
    )  # already aligned: unchanged
    assert class_prior(np.array([0, 0, 1, -1]), 3) == pytest.approx([3 / 6, 2 / 6, 1 / 6])


def test_quantile_rule_keeps_the_top_of_every_predicted_class():
    pred = np.array([0] * 10 + [1] * 4)
    conf = np.concatenate([np.linspace(0.9, 0.99, 10), np.linspace(0.3, 0.6, 4)])
    keep = quantile_mask(pred, conf, q=0.5, min_conf=0.0)
    assert keep[:10].sum() == 5 and keep[10:].sum() == 2  # half of each class, even the unsure one
    assert quantile_mask(pred, conf, q=0.5, min_conf=0.55)[10:].sum() == 1


def test_selection_summary_reports_precision_per_class():
    from meiju_ray.pseudo.selection import summary

    pred = np.array([0, 0, 1, 1])
    probs = _probs(pred, np.full(4, 0.95), 2)
    sel = select(probs, probs, PseudoLabelConfig(threshold=0.9), "ab", "ab")
    info = summary(sel, "ab", "ab", np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    assert info["emotion_precision"] == {"a": 0.5, "b": 1.0}
    assert info["emotion_counts"] == {"a": 2, "b": 2}


def test_students_noise_every_row_of_a_student_run_and_nothing_in_a_supervised_one():
    from meiju_ray.train.augment import for_run

    cfg = AugmentConfig(apply_to="students")
    gold, student = _split([3, 3]), _split([3, 3])
    student.pseudo = np.array([False, True])
    assert for_run(cfg, gold) is None
    assert for_run(cfg, student).apply_to == "all"
    assert for_run(STRONG, gold) is STRONG  # other modes decide per row
