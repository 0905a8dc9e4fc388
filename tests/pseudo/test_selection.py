"""Tests of pseudo-label selection and temperature calibration (meiju_ray.pseudo.selection)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meiju_ray.config import PseudoLabelConfig
from meiju_ray.pseudo.selection import (
    Selection,
    allowed_pairs_from,
    apply_temperature,
    fit_temperature,
    select,
    summary,
)

EMO = ["happy", "fear", "neutral"]
INT = ["questioning", "agreeing"]


def probs(rows: list[tuple[int, float]], n_classes: int) -> np.ndarray:
    """(N, C): row i puts `conf` on class `c` and spreads the rest evenly."""
    out = np.empty((len(rows), n_classes))
    for i, (c, conf) in enumerate(rows):
        out[i] = (1.0 - conf) / (n_classes - 1)
        out[i, c] = conf
    return out


def run(emo_rows, int_rows, allowed=None, **cfg) -> Selection:
    return select(
        probs(emo_rows, len(EMO)),
        probs(int_rows, len(INT)),
        PseudoLabelConfig(**cfg),
        EMO,
        INT,
        allowed_pairs=allowed,
    )


def test_per_task_is_independent_per_task():
    sel = run(
        [(0, 0.995), (1, 0.5), (2, 0.999), (0, 0.4)],
        [(1, 0.6), (0, 0.995), (1, 0.999), (0, 0.55)],
        rule="per_task",
        threshold=0.99,
    )
    assert sel.emotion.tolist() == [0, -1, 2, -1]
    assert sel.intent.tolist() == [-1, 0, 1, -1]
    assert sel.selected.tolist() == [True, True, True, False]
    assert sel.emo_pred.tolist() == [0, 1, 2, 0] and sel.int_pred.tolist() == [1, 0, 1, 0]
    assert sel.emotion.dtype == np.int64 and sel.weight.dtype == np.float32
    assert sel.emo_conf.dtype == np.float32 and sel.emo_conf[0] == pytest.approx(0.995)


def test_joint_needs_both_tasks():
    sel = run(
        [(0, 0.995), (1, 0.5), (2, 0.999)],
        [(1, 0.6), (0, 0.995), (1, 0.999)],
        rule="joint",
        threshold=0.99,
    )
    assert sel.emotion.tolist() == [-1, -1, 2]
    assert sel.intent.tolist() == [-1, -1, 1]
    assert sel.selected.tolist() == [False, False, True]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threshold_equality_is_kept(dtype):
    emo = probs([(0, 0.95), (1, 0.9499)], len(EMO)).astype(dtype)
    itn = probs([(1, 0.95), (0, 0.95)], len(INT)).astype(dtype)
    sel = select(emo, itn, PseudoLabelConfig(rule="per_task", threshold=0.95), EMO, INT)
    assert sel.emotion.tolist() == [0, -1]
    assert sel.intent.tolist() == [1, 0]
    sel = select(emo, itn, PseudoLabelConfig(rule="joint", threshold=0.95), EMO, INT)
    assert sel.selected.tolist() == [True, False]


def test_classwise_uses_the_predicted_class_bar():
    cfg = dict(
        rule="classwise",
        threshold=0.99,
        class_thresholds={"emotion": {"fear": 0.85}, "intent": {"agreeing": 0.85}},
    )
    # rare class (fear) at 0.86 >= its 0.85 bar; frequent class (happy) at 0.98 < the 0.99 default
    sel = run(
        [(1, 0.86), (0, 0.98), (1, 0.84), (2, 0.99)],
        [(1, 0.85), (0, 0.98), (0, 0.995), (1, 0.6)],
        **cfg,
    )
    assert sel.emotion.tolist() == [1, -1, -1, 2]
    assert sel.intent.tolist() == [1, -1, 0, -1]
    with pytest.raises(ValueError, match="unknown label"):
        run([(1, 0.86)], [(1, 0.9)], rule="classwise", class_thresholds={"emotion": {"joy": 0.5}})


def test_topk_takes_k_most_confident_per_class():
    # class 0: five rows, class 1: one row, class 2: two rows (one below min_confidence)
    emo_rows = [(0, 0.6), (0, 0.9), (1, 0.7), (0, 0.8), (2, 0.5), (0, 0.9), (0, 0.95), (2, 0.3)]
    int_rows = [(0, 0.6)] * len(emo_rows)
    sel = run(emo_rows, int_rows, rule="topk", topk_per_class=2, min_confidence=0.4)
    kept = sel.emotion
    assert (kept == 0).sum() == 2 and kept[
        6
    ] == 0  # 0.95 first, then the earlier 0.9 (ties by order)
    assert kept[1] == 0 and kept[5] == -1 and kept[3] == -1
    assert (kept == 1).sum() == 1 and kept[2] == 1  # fewer rows than k: all of them
    assert (kept == 2).sum() == 1 and kept[4] == 2 and kept[7] == -1  # 0.3 < min_confidence
    assert (sel.intent == 0).sum() == 2 and sel.intent[:2].tolist() == [
        0,
        0,
    ]  # all ties: first rows


def test_consistency_drops_unseen_pairs_and_counts_them():
    allowed = allowed_pairs_from(
        np.array([0, 1, 2, -1, 0]), np.array([1, 0, 1, 0, -1]), len(EMO), len(INT)
    )
    assert allowed.tolist() == [[False, True], [True, False], [False, True]]
    emo_rows, int_rows = (
        [(0, 0.99), (0, 0.99), (0, 0.99), (2, 0.5)],
        [(1, 0.99), (0, 0.99), (0, 0.5), (0, 0.99)],
    )
    sel = run(emo_rows, int_rows, allowed, rule="per_task", threshold=0.9, consistency=True)
    assert sel.emotion.tolist() == [
        0,
        -1,
        0,
        -1,
    ]  # (happy, agreeing) seen; (happy, questioning) not
    assert sel.intent.tolist() == [1, -1, -1, 0]  # single-task rows are not filtered
    assert sel.selected.tolist() == [True, False, True, True]
    assert summary(sel, EMO, INT)["rejected_inconsistent"] == 1
    with pytest.raises(ValueError, match="allowed_pairs"):
        run(emo_rows, int_rows, None, consistency=True)


def test_empty_selection_is_not_an_error():
    sel = run([(0, 0.999), (1, 0.6)], [(1, 0.999), (0, 0.6)], rule="per_task", threshold=1.0)
    assert sel.emotion.tolist() == [-1, -1] and sel.intent.tolist() == [-1, -1]
    assert not sel.selected.any() and not sel.weight.any()
    s = summary(sel, EMO, INT, true_emotion=np.array([0, 1]), true_intent=np.array([1, 0]))
    assert s["n_selected"] == 0 and s["selection_rate"] == 0.0
    assert s["emotion_accuracy"] is None and s["intent_accuracy"] is None
    assert s["emotion_counts"] == {"happy": 0, "fear": 0, "neutral": 0}
    json.dumps(s)


def test_weights_constant_and_confidence():
    emo_rows, int_rows = [(0, 0.96), (1, 0.98), (2, 0.5)], [(1, 0.5), (0, 0.94), (0, 0.5)]
    sel = run(emo_rows, int_rows, rule="per_task", threshold=0.9, weight=0.5, weighting="constant")
    assert sel.weight.tolist() == [0.5, 0.5, 0.0]
    sel = run(
        emo_rows, int_rows, rule="per_task", threshold=0.9, weight=0.5, weighting="confidence"
    )
    np.testing.assert_allclose(sel.weight, [0.5 * 0.96, 0.5 * (0.98 + 0.94) / 2, 0.0], rtol=1e-6)


def test_summary_counts_and_accuracies():
    emo_rows = [(0, 0.99), (0, 0.99), (1, 0.99), (2, 0.5)]
    int_rows = [(1, 0.99), (0, 0.5), (0, 0.99), (1, 0.99)]
    sel = run(emo_rows, int_rows, rule="per_task", threshold=0.9)
    s = summary(
        sel, EMO, INT, true_emotion=np.array([0, 1, 1, 2]), true_intent=np.array([1, 0, 1, -1])
    )
    assert s["n_rows"] == 4 and s["n_selected"] == 4 and s["selection_rate"] == 1.0
    assert s["n_emotion_kept"] == 3 and s["n_intent_kept"] == 3 and s["rejected_inconsistent"] == 0
    assert s["emotion_counts"] == {"happy": 2, "fear": 1, "neutral": 0}
    assert s["intent_counts"] == {"questioning": 1, "agreeing": 2}
    assert s["emotion_accuracy"] == pytest.approx(2 / 3)  # rows 0, 2 right; row 1 wrong
    assert s["intent_accuracy"] == pytest.approx(1 / 2)  # row 3 has no true intent
    assert s["emotion_accuracy_all"] == pytest.approx(3 / 4)
    assert s["intent_accuracy_all"] == pytest.approx(2 / 3)
    assert s["mean_emotion_conf"] == pytest.approx(0.99, abs=1e-6)
    json.dumps(s)
    assert "emotion_accuracy" not in summary(sel, EMO, INT)


def _sampled(
    t_true: float, n: int = 20000, c: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z / t_true)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, size=(n, c))
    p = np.exp(z / t_true - (z / t_true).max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, c - 1)


def test_fit_temperature_recovers_known_temperature():
    z, y = _sampled(2.5)
    assert fit_temperature(z, y) == pytest.approx(2.5, abs=0.15)
    y_masked = y.copy()
    y_masked[::2] = -1  # unlabelled rows ignored
    assert fit_temperature(z, y_masked) == pytest.approx(2.5, abs=0.25)
    assert fit_temperature(z, np.full(len(y), -1)) == 1.0


def test_overconfident_teacher_is_softened():
    z, y = _sampled(3.0, n=4000, seed=1)
    t = fit_temperature(z, y)
    assert t > 1.0
    raw = np.exp(z - z.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    cal = apply_temperature(raw, t)
    assert (
        np.all(cal.max(axis=1) <= raw.max(axis=1) + 1e-12)
        and cal.max(axis=1).mean() < raw.max(axis=1).mean()
    )
    np.testing.assert_allclose(cal.sum(axis=1), 1.0)
    np.testing.assert_array_equal(cal.argmax(axis=1), raw.argmax(axis=1))
    np.testing.assert_allclose(apply_temperature(raw, 1.0), raw, atol=1e-9)
    assert np.all(np.isfinite(apply_temperature(np.array([[1.0, 0.0, 0.0]]), 0.1)))


def test_bad_inputs_raise():
    cfg = PseudoLabelConfig()
    emo, itn = probs([(0, 0.9)] * 3, len(EMO)), probs([(0, 0.9)] * 3, len(INT))
    with pytest.raises(ValueError, match="rows"):
        select(emo, itn[:2], cfg, EMO, INT)
    with pytest.raises(ValueError, match="classes"):
        select(emo[:, :2], itn, cfg, EMO, INT)
    with pytest.raises(ValueError, match="2-D"):
        select(emo[0], itn, cfg, EMO, INT)
    bad = emo.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select(bad, itn, cfg, EMO, INT)
    with pytest.raises(ValueError, match="rule"):
        select(emo, itn, PseudoLabelConfig(rule="nope"), EMO, INT)
    with pytest.raises(ValueError):
        apply_temperature(emo, 0.0)
    with pytest.raises(ValueError, match="rows"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))


def test_engine_choice_keeps_ray_start_up_off_small_local_pools():
    from meiju_ray.config import RayConfig
    from meiju_ray.distributed.cluster import attached_to_cluster
    from meiju_ray.pseudo.labelling import choose_engine

    assert choose_engine(5_000, 20_000, attached=False) == "in_process"
    assert (
        choose_engine(20_000, 20_000, attached=False) == "ray_data"
    )  # large pool: the actors pay off
    assert choose_engine(5_000, 0, attached=False) == "ray_data"  # 0 = always Ray Data
    assert (
        choose_engine(5_000, 20_000, attached=True) == "ray_data"
    )  # a shared cluster: always Ray Data
    assert attached_to_cluster(RayConfig(address="ray://head:10001"))


def test_auto_actor_count_comes_from_the_resources_ray_reports():
    from meiju_ray.distributed.pseudo_label import auto_actors

    assert auto_actors({"CPU": 2.0}, 0.5, 0.0, n_shards=10) == 2  # 1 CPU kept free for Ray Data
    assert auto_actors({"CPU": 16.0}, 1.0, 0.0, n_shards=100) == 15
    assert auto_actors({"CPU": 64.0}, 0.5, 0.0, n_shards=3) == 3  # no idle actors beyond the shards
    assert auto_actors({"CPU": 64.0, "GPU": 2.0}, 1.0, 0.25, n_shards=100) == 8
    assert auto_actors({"CPU": 1.0}, 0.5, 0.0, n_shards=10) == 1  # always at least one
