"""Weighted CE with masked labels, the joint loss composition, class weights, label smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meiju_ray.config import LossConfig
from meiju_ray.model.losses import balanced_class_weights, joint_loss, weighted_ce

torch.set_num_threads(1)


def hand_ce(
    logits: torch.Tensor, target: list[int], weight: list[float], class_weight=None
) -> float:
    """sum_i w_i * cw[y_i] * (-log softmax(logits_i)[y_i]) / sum_i w_i * cw[y_i],
    over rows with y_i >= 0."""
    num = den = 0.0
    for row, y, w in zip(logits.tolist(), target, weight):
        if y < 0:
            continue
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = log_z - row[y]
        cw = 1.0 if class_weight is None else float(class_weight[y])
        num += w * cw * nll
        den += w * cw
    return num / den


LOGITS = torch.tensor(
    [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [3.0, -2.0, 1.0], [0.0, 0.0, 4.0]]
)


def test_weighted_ce_unit_weights_is_plain_mean():
    target = [0, 2, 1, 1, 2]
    got = weighted_ce(LOGITS, torch.tensor(target), torch.ones(5))
    assert float(got) == pytest.approx(hand_ce(LOGITS, target, [1] * 5), rel=1e-6)
    assert float(got) == pytest.approx(
        float(torch.nn.functional.cross_entropy(LOGITS, torch.tensor(target))), rel=1e-6
    )


def test_weighted_ce_mixed_weights_and_masked_rows():
    target = [0, 2, -1, 1, 2]
    weight = [1.0, 0.5, 1.0, 0.0, 0.5]
    got = weighted_ce(LOGITS, torch.tensor(target), torch.tensor(weight))
    expected = hand_ce(LOGITS, target, weight)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # the normaliser is the sum of labelled-row weights (1 + 0.5 + 0 + 0.5), not the row count
    nll = [-float(torch.log_softmax(LOGITS[i], 0)[y]) for i, y in enumerate(target) if y >= 0]
    assert expected == pytest.approx(
        (1.0 * nll[0] + 0.5 * nll[1] + 0.0 * nll[2] + 0.5 * nll[3]) / 2.0
    )
    # a masked row's logits never matter, however wrong
    crazy = LOGITS.clone()
    crazy[2] = torch.tensor([100.0, -100.0, 50.0])
    assert float(weighted_ce(crazy, torch.tensor(target), torch.tensor(weight))) == pytest.approx(
        float(got), rel=1e-6
    )


def test_weighted_ce_gradient_skips_masked_and_zero_weight_rows():
    logits = LOGITS.clone().requires_grad_(True)
    loss = weighted_ce(
        logits, torch.tensor([0, -1, 1, 2, 0]), torch.tensor([1.0, 1.0, 0.0, 2.0, 1.0])
    )
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and torch.all(logits.grad[2] == 0)
    assert logits.grad[0].abs().sum() > 0 and logits.grad[3].abs().sum() > 0


def test_weighted_ce_all_unlabelled_is_zero_and_differentiable():
    logits = LOGITS.clone().requires_grad_(True)
    loss = weighted_ce(logits, torch.full((5,), -1), torch.ones(5))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_weighted_ce_class_weights():
    target = [0, 2, 1, 1, -1]
    weight = [1.0, 0.5, 1.0, 2.0, 1.0]
    cw = torch.tensor([0.2, 3.0, 1.0])
    got = weighted_ce(LOGITS, torch.tensor(target), torch.tensor(weight), class_weight=cw)
    assert float(got) == pytest.approx(hand_ce(LOGITS, target, weight, cw.tolist()), rel=1e-6)
    assert float(got) != pytest.approx(hand_ce(LOGITS, target, weight), rel=1e-3)


def test_label_smoothing_matches_formula_and_penalises_confidence():
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    target = torch.tensor([0])
    plain = float(weighted_ce(confident, target, torch.ones(1)))
    smooth = float(weighted_ce(confident, target, torch.ones(1), smoothing=0.2))
    assert smooth > plain + 0.5
    # (1 - eps) * NLL(y) + eps * mean_c NLL(c)
    logp = torch.log_softmax(confident[0], 0)
    expected = 0.8 * -float(logp[0]) + 0.2 * -float(logp.mean())
    assert smooth == pytest.approx(expected, rel=1e-5)


# ---- joint loss ----------------------------------------------------------------------------------


def fake_outputs(seed: int, fused: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        k: torch.randn(6, c, generator=g)
        for k, c in (("emotion", 7), ("emotion_aux", 7), ("intent_main", 8), ("intent_aux", 8))
    }
    out["intent"] = 0.5 * (out["intent_main"] + out["intent_aux"]) if fused else out["intent_main"]
    return out


BATCH = {
    "emotion": torch.tensor([0, 6, -1, 3, 2, 1]),
    "intent": torch.tensor([7, -1, 2, 2, 0, 5]),
    "weight": torch.tensor([1.0, 0.5, 1.0, 0.25, 1.0, 0.0]),
}


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(emotion_weight=2.0, intent_weight=0.5, aux_weight=0.3),
        LossConfig(emotion_weight=0.0, intent_weight=1.5, aux_weight=0.0),
    ],
)
@pytest.mark.parametrize("fused", [False, True])
def test_joint_loss_is_weighted_sum_of_parts(cfg, fused):
    out = fake_outputs(1, fused)
    total, parts = joint_loss(out, BATCH, cfg)
    w = BATCH["weight"]
    expect_parts = {
        "emotion": weighted_ce(out["emotion"], BATCH["emotion"], w),
        "intent": weighted_ce(out["intent_main"], BATCH["intent"], w),
        "emotion_aux": weighted_ce(out["emotion_aux"], BATCH["emotion"], w),
        "intent_aux": weighted_ce(out["intent_aux"], BATCH["intent"], w),
    }
    if fused:
        expect_parts["intent_fused"] = weighted_ce(out["intent"], BATCH["intent"], w)
    assert set(parts) == set(expect_parts)
    for key, value in expect_parts.items():
        assert parts[key] == pytest.approx(float(value), rel=1e-6), key
    expected = (
        cfg.emotion_weight * parts["emotion"]
        + cfg.intent_weight * parts["intent"]
        + cfg.aux_weight * (parts["emotion_aux"] + parts["intent_aux"])
        + (cfg.intent_weight * parts["intent_fused"] if fused else 0.0)
    )
    assert float(total) == pytest.approx(expected, rel=1e-6)


def test_joint_loss_intent_fused_only_when_fusion_on():
    from meiju_ray.config import ExperimentConfig
    from meiju_ray.model.network import build_model

    torch.manual_seed(0)
    batch = {"A": torch.randn(6, 3, 4), "A_mask": torch.ones(6, 3, dtype=torch.bool), **BATCH}
    for mode in ("off", "average", "learned"):
        cfg = ExperimentConfig.from_dict(
            {
                "data": {"modalities": [{"name": "A", "folder": "a", "dim": 4}]},
                "model": {
                    "hidden": 8,
                    "fusion_heads": 2,
                    "heads_emo_to_int": 2,
                    "heads_int_to_emo": 2,
                    "intent_fusion": mode,
                },
            }
        )
        _, parts = joint_loss(build_model(cfg)(batch), batch, cfg.loss)
        assert ("intent_fused" in parts) == (mode != "off"), mode


def test_joint_loss_class_weights_and_smoothing_pass_through():
    out = fake_outputs(2, fused=True)
    cw = {"emotion": torch.linspace(0.5, 2.0, 7), "intent": torch.linspace(2.0, 0.5, 8)}
    cfg = LossConfig(label_smoothing=0.1)
    _, parts = joint_loss(out, BATCH, cfg, cw)
    w = BATCH["weight"]
    assert parts["emotion"] == pytest.approx(
        float(weighted_ce(out["emotion"], BATCH["emotion"], w, cw["emotion"], 0.1))
    )
    assert parts["intent_aux"] == pytest.approx(
        float(weighted_ce(out["intent_aux"], BATCH["intent"], w, cw["intent"], 0.1))
    )
    assert parts["intent_fused"] == pytest.approx(
        float(weighted_ce(out["intent"], BATCH["intent"], w, cw["intent"], 0.1))
    )


# ---- class weights -------------------------------------------------------------------------------


def test_balanced_class_weights_hand_case():
    got = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([4 / (3 * 3), 4 / (3 * 1), 0.0]))


def test_balanced_class_weights_ignore_unlabelled():
    got = balanced_class_weights(
        np.array([-1, 2, 2, -1, 0, 1, 2, -1]), 3
    )  # 5 labelled: counts 1, 1, 3
    torch.testing.assert_close(got, torch.tensor([5 / 3, 5 / 3, 5 / 9]))
    # sample-weighted mean is 1 when every class is present (sklearn 'balanced')
    labels = np.array([2, 2, 0, 1, 2])
    assert float(got[labels].mean()) == pytest.approx(1.0)
